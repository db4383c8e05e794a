//! The versions of the `motion:guest` world a guest may speak, behind one face: a linked guest
//! ([`Pre`]), an instance of it ([`Instance`]), and the request, answer and refusal in the
//! runtime's own types, which do not depend on the version.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use serde::Serialize;

use crate::bindings::{v0_1, v0_2};
use crate::store::State;

/// A world version's name, as `guest check` and the admin API show it.
pub const V0_1: &str = "motion:guest@0.1.0";
pub const V0_2: &str = "motion:guest@0.2.0";

pub use motion_request::Segmentation;

/// A guest's description of itself (its `info()` export).
#[derive(Debug, Clone, Serialize)]
pub struct GuestInfo {
    pub name: String,
    pub version: String,
    pub model: String,
    pub input_shape: Vec<i64>,
    pub labels: Vec<String>,
    pub accepts: Vec<String>,
}

/// One piece of uploaded media, as the guest receives it.
pub struct Media {
    pub content_type: String,
    pub data: Vec<u8>,
}

/// One request to a guest, whatever its world.
pub(crate) struct Request {
    pub media: Vec<Media>,
    pub top_k: u32,
    pub segments: Option<Segmentation>,
    pub max_segments: u32,
}

/// A guest's answer as it gave it, before the runtime checks it.
pub(crate) struct Answer {
    pub label: String,
    pub score: f32,
    pub top_k: Vec<(String, f32)>,
    pub frames_total: u32,
    pub frames_used: u32,
    pub segments: Vec<Segment>,
}

/// One window of a timeline.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its frames: `start_frame <= frame < end_frame`.
    pub start_frame: u32,
    pub end_frame: u32,
    /// Its span in seconds from the first frame, for timed media.
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub label: String,
    pub score: f32,
    pub top_k: Vec<(String, f32)>,
}

/// The errors a guest may return, whatever its world.
pub(crate) enum Refusal {
    BadInput(String),
    Unsupported(String),
    Inference(String),
    BadRequest(String),
}

/// A guest linked against the host, ready to instantiate, in the world it exports.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v0_1::MotionGuestPre<State>),
    V0_2(v0_2::MotionGuestPre<State>),
}

impl Pre {
    /// The newest world whose exports the component has.
    pub(crate) fn new(pre: InstancePre<State>) -> Result<Pre, String> {
        match v0_2::MotionGuestPre::new(pre.clone()) {
            Ok(pre) => Ok(Pre::V0_2(pre)),
            Err(newest) => v0_1::MotionGuestPre::new(pre).map(Pre::V0_1).map_err(|_| {
                format!("does not export motion:guest/classifier ({V0_2} or {V0_1}): {newest:#}")
            }),
        }
    }

    pub(crate) fn world(&self) -> &'static str {
        match self {
            Pre::V0_1(_) => V0_1,
            Pre::V0_2(_) => V0_2,
        }
    }

    pub(crate) async fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_1(pre) => Instance::V0_1(pre.instantiate_async(store).await?),
            Pre::V0_2(pre) => Instance::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

pub(crate) enum Instance {
    V0_1(v0_1::MotionGuest),
    V0_2(v0_2::MotionGuest),
}

macro_rules! guest_info {
    ($i:expr) => {{
        let i = $i;
        GuestInfo {
            name: i.name,
            version: i.version,
            model: i.model,
            input_shape: i.input_shape,
            labels: i.labels,
            accepts: i.accepts,
        }
    }};
}

impl Instance {
    pub(crate) async fn info(&self, store: &mut Store<State>) -> wasmtime::Result<GuestInfo> {
        Ok(match self {
            Instance::V0_1(g) => guest_info!(g.motion_guest_classifier().call_info(store).await?),
            Instance::V0_2(g) => guest_info!(g.motion_guest_classifier().call_info(store).await?),
        })
    }

    /// Calls `classify`. A 0.1.0 guest gets no timeline; the caller refuses one before asking.
    pub(crate) async fn classify(
        &self,
        store: &mut Store<State>,
        req: Request,
    ) -> wasmtime::Result<Result<Answer, Refusal>> {
        match self {
            Instance::V0_1(g) => {
                use v0_1::motion::guest::types as wit;
                let req = wit::Request {
                    media: req
                        .media
                        .into_iter()
                        .map(|m| wit::Media { content_type: m.content_type, data: m.data })
                        .collect(),
                    top_k: req.top_k,
                };
                Ok(match g.motion_guest_classifier().call_classify(store, &req).await? {
                    Ok(c) => Ok(Answer {
                        label: c.label,
                        score: c.score,
                        top_k: c.top_k.into_iter().map(|e| (e.label, e.score)).collect(),
                        frames_total: c.frames_total,
                        frames_used: c.frames_used,
                        segments: Vec::new(),
                    }),
                    Err(wit::Error::BadInput(m)) => Err(Refusal::BadInput(m)),
                    Err(wit::Error::UnsupportedMedia(m)) => Err(Refusal::Unsupported(m)),
                    Err(wit::Error::Inference(m)) => Err(Refusal::Inference(m)),
                })
            }
            Instance::V0_2(g) => {
                use v0_2::motion::guest::types as wit;
                let req = wit::Request {
                    media: req
                        .media
                        .into_iter()
                        .map(|m| wit::Media { content_type: m.content_type, data: m.data })
                        .collect(),
                    top_k: req.top_k,
                    segments: req.segments.map(|s| match s {
                        Segmentation::Seconds(s) => wit::Segmentation::Seconds(s),
                        Segmentation::Frames(n) => wit::Segmentation::Frames(n),
                    }),
                    max_segments: req.max_segments,
                };
                let pairs = |top: Vec<wit::LabelScore>| top.into_iter().map(|e| (e.label, e.score)).collect();
                Ok(match g.motion_guest_classifier().call_classify(store, &req).await? {
                    Ok(c) => Ok(Answer {
                        label: c.label,
                        score: c.score,
                        top_k: pairs(c.top_k),
                        frames_total: c.frames_total,
                        frames_used: c.frames_used,
                        segments: c
                            .segments
                            .into_iter()
                            .map(|s| Segment {
                                start_frame: s.start_frame,
                                end_frame: s.end_frame,
                                start_s: s.start_s,
                                end_s: s.end_s,
                                label: s.label,
                                score: s.score,
                                top_k: pairs(s.top_k),
                            })
                            .collect(),
                    }),
                    Err(wit::Error::BadInput(m)) => Err(Refusal::BadInput(m)),
                    Err(wit::Error::UnsupportedMedia(m)) => Err(Refusal::Unsupported(m)),
                    Err(wit::Error::Inference(m)) => Err(Refusal::Inference(m)),
                    Err(wit::Error::BadRequest(m)) => Err(Refusal::BadRequest(m)),
                })
            }
        }
    }
}
