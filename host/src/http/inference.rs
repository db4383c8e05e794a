//! The Open Inference Protocol's models, whichever transport carries the request (REST in
//! `oip.rs`, gRPC in `grpc.rs`): resolving a model name and version, describing a model (its
//! metadata, Triton's model configuration, its statistics), and running an inference request,
//! parsed into the wire's tensors, on the raw model or on the `motion-classifier` pipeline.
//!
//! Two models are visible. Each model in the registry is served raw (`motion-resnet18`: FP32
//! `[-1,8,112,112]` in, FP32 logits out), through the same batcher as the guests' calls. The
//! guest pipeline is `motion-classifier`: a BYTES input `media` of encoded clips or frames in,
//! the best `label` (BYTES) and every label's `scores` (FP32, in the guest's label order) out,
//! run by the default guest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ApiError;
use super::access::AccessInfo;
use super::oip_codec::{self as wire, OutputData, WireError};
use crate::metrics::{METRICS, StageTotals};
use crate::service::{GuestChoice, Service};
use motion_model::{Expected, Input, MAX_ROWS_PER_CALL, Model, Progress};
use motion_runtime::{LoadedGuest, Media, Routed, Segmentation, StageTimings, media};

/// The guest pipeline's model name.
pub const PIPELINE: &str = "motion-classifier";
/// Its input and outputs.
const MEDIA: &str = "media";
const LABEL: &str = "label";
const SCORES: &str = "scores";
/// The timeline, when the request's parameters ask for one: a row per window, its start and
/// end frame, start and end second (NaN for untimed media), then its score for each label.
const SEGMENTS: &str = "segments";
/// The best label of each window.
const SEGMENT_LABELS: &str = "segment_labels";
/// Columns of a `segments` row before the scores.
const SEGMENT_COLUMNS: usize = 4;

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError::bad_request(e.0)
    }
}

/// What a model name resolves to.
pub enum Target {
    Raw(Arc<Model>),
    Pipeline(Arc<LoadedGuest>),
}

impl Target {
    /// The version served: the manifest's, or the default guest's.
    pub fn version(&self) -> &str {
        match self {
            Target::Raw(model) => &model.manifest.version,
            Target::Pipeline(guest) => &guest.info.version,
        }
    }
}

/// Whether a client's `asked` version names the `served` one: the version itself
/// (`1.0.0`), or its major number (`1`), which is how Triton's clients write versions
/// (`-x 1`, `/versions/1`), integers.
pub fn version_matches(served: &str, asked: &str) -> bool {
    if asked == served {
        return true;
    }
    !asked.is_empty()
        && asked.bytes().all(|b| b.is_ascii_digit())
        && asked.parse::<u64>().ok() == major(served).parse().ok()
}

/// Finds `name` (at `version`, when given and not empty) among the served models.
pub fn resolve(service: &Service, name: &str, version: Option<&str>) -> Result<Target, ApiError> {
    let target = if name == PIPELINE {
        Target::Pipeline(service.guest(GuestChoice::Default)?)
    } else if let Some(model) = service.model(name)? {
        Target::Raw(model)
    } else {
        return Err(ApiError::not_found(format!(
            "Request for unknown model: '{name:.64}' is not found (served: {})",
            served_names(service)?.join(", ")
        )));
    };
    match version {
        Some(v) if !v.is_empty() && !version_matches(target.version(), v) => {
            Err(ApiError::not_found(format!(
                "model '{name}' has no version '{v:.64}' (serving version '{}', also reachable as '{}')",
                target.version(),
                major(target.version())
            )))
        }
        _ => Ok(target),
    }
}

/// Announces the call a request to `name` will make, before its body is read (see
/// [`Service::announce`]); nothing for a name that resolves to nothing.
pub fn announce(service: &Service, name: &str) -> Expected {
    match resolve(service, name, None) {
        Ok(Target::Raw(model)) => model.expect_call(),
        Ok(Target::Pipeline(guest)) => guest.model.expect_call(),
        Err(_) => Expected::default(),
    }
}

/// The repository index: every model served (the raw models, then the pipeline) with the
/// version it serves (empty while it cannot be resolved, as the pipeline before its guest is
/// loaded). Models load at start and guests through the admin API, so there is nothing else
/// to list.
pub fn repository(service: &Service) -> Result<Vec<(String, String)>, ApiError> {
    let index = served_names(service)?.into_iter().map(|name| {
        let version = resolve(service, &name, None).map(|t| t.version().to_string()).unwrap_or_default();
        (name, version)
    });
    Ok(index.collect())
}

/// The major number of a version (`1` of `1.0.0`).
fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// Every model name served: the raw models, then the pipeline.
pub fn served_names(service: &Service) -> Result<Vec<String>, ApiError> {
    let mut served: Vec<String> = service.models()?.iter().map(|m| m.name().to_string()).collect();
    served.push(PIPELINE.to_string());
    Ok(served)
}

/// A tensor as metadata describes it: its shape with `-1` for a dimension of any size.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    fn new(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
    }
}

/// A model's metadata, as both transports report it.
#[derive(Debug, Clone)]
pub struct Description {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Served as the REST metadata's `parameters` (the gRPC message has no such field).
    pub parameters: Vec<(&'static str, String)>,
}

pub fn describe(name: &str, target: &Target) -> Description {
    match target {
        Target::Raw(model) => {
            let m = &model.manifest;
            let spec = |t: &motion_model::TensorSpec| TensorSpec::new(&t.name, &t.dtype, &t.shape);
            Description {
                name: name.into(),
                versions: vec![m.version.clone()],
                platform: "pytorch_torchscript",
                inputs: m.inputs.iter().map(spec).collect(),
                outputs: m.outputs.iter().map(spec).collect(),
                parameters: vec![
                    ("device", model.device.to_string()),
                    ("precision", model.precision.name().to_string()),
                    ("preprocessing", m.preprocessing.clone()),
                ],
            }
        }
        Target::Pipeline(guest) => {
            let labels = guest.info.labels.len() as i64;
            Description {
                name: name.into(),
                versions: vec![guest.info.version.clone()],
                platform: "wasm_component",
                inputs: vec![TensorSpec::new(MEDIA, "BYTES", &[-1])],
                outputs: vec![
                    TensorSpec::new(LABEL, "BYTES", &[1]),
                    TensorSpec::new(SCORES, "FP32", &[1, labels]),
                    TensorSpec::new(SEGMENTS, "FP32", &[-1, SEGMENT_COLUMNS as i64 + labels]),
                    TensorSpec::new(SEGMENT_LABELS, "BYTES", &[-1]),
                ],
                parameters: vec![
                    ("labels", guest.info.labels.join(",")),
                    ("guest", guest.name.clone()),
                    ("model", guest.model.name().to_string()),
                    ("device", guest.model.device.to_string()),
                    ("precision", guest.model.precision.name().to_string()),
                ],
            }
        }
    }
}

/// Triton's model configuration, the part its clients read (`perf_analyzer` reads it before
/// it sends anything): the batch a request may carry, each tensor's dimensions without the
/// batch dimension, the dynamic batcher's settings and where the model runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    /// The rows one request may carry (0: the model takes no batch dimension).
    pub max_batch_size: u32,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Present when requests are batched together: the preferred batch sizes and the longest
    /// a batch waits for more rows.
    pub dynamic_batching: Option<(Vec<u32>, Duration)>,
    /// `KIND_CPU` or `KIND_GPU`, and one instance (the model's inference thread).
    pub instance_kind: &'static str,
    /// The metadata's parameters (the labels, where the network runs), as the configuration's
    /// string parameters: gRPC's metadata message has no place for them.
    pub parameters: Vec<(&'static str, String)>,
}

pub fn configure(name: &str, target: &Target) -> Config {
    let d = describe(name, target);
    let model = match target {
        Target::Raw(model) => model,
        Target::Pipeline(guest) => &guest.model,
    };
    let instance_kind = if model.device.to_string().starts_with("cuda") { "KIND_GPU" } else { "KIND_CPU" };
    match target {
        Target::Raw(model) => {
            let unbatched = |t: &TensorSpec| TensorSpec { shape: t.shape[1..].to_vec(), ..t.clone() };
            Config {
                name: d.name,
                platform: d.platform,
                backend: "pytorch",
                max_batch_size: MAX_ROWS_PER_CALL,
                inputs: d.inputs.iter().map(unbatched).collect(),
                outputs: d.outputs.iter().map(unbatched).collect(),
                dynamic_batching: Some((vec![model.batching.max_rows as u32], model.batching.max_delay)),
                instance_kind,
                parameters: d.parameters,
            }
        }
        // One request is one clip: no batch dimension. Its forward pass is batched with the
        // others' all the same, inside the server.
        Target::Pipeline(_) => Config {
            name: d.name,
            platform: d.platform,
            backend: "wasm",
            max_batch_size: 0,
            inputs: d.inputs,
            outputs: d.outputs,
            dynamic_batching: None,
            instance_kind,
            parameters: d.parameters,
        },
    }
}

/// A model's statistics, Triton's figures from the same series `/metrics` exposes: requests
/// answered (`success`), failed, and the time in each stage (`queue`, `compute_input` the
/// guest's preprocessing or the tensor's parsing, `compute_infer` the forward pass,
/// `compute_output`), and the forward passes run (`execution_count`, shared by every route
/// that reaches the network).
#[derive(Debug, Clone)]
pub struct Statistics {
    pub name: String,
    pub version: String,
    pub success: StageTotals,
    pub fail: StageTotals,
    pub queue: StageTotals,
    pub compute_input: StageTotals,
    pub compute_infer: StageTotals,
    pub compute_output: StageTotals,
    pub inference_count: u64,
    pub execution_count: u64,
}

pub fn statistics(name: &str, target: &Target) -> Statistics {
    let (model, guest) = match target {
        Target::Raw(model) => (model.name(), ""),
        Target::Pipeline(g) => (g.model.name(), g.name.as_str()),
    };
    let stage = |s: &str| METRICS.stage_totals(s, model, guest);
    let success = stage("total");
    Statistics {
        name: name.into(),
        // Triton's tools match statistics to a model by an integer version (perf_analyzer
        // reads it with `stoll`), so they carry the major number.
        version: major(target.version()).into(),
        inference_count: success.count,
        execution_count: METRICS.batches(model),
        fail: METRICS.failures(model, guest),
        queue: stage("queue"),
        compute_input: stage("preprocess"),
        compute_infer: stage("inference"),
        compute_output: stage("postprocess"),
        success,
    }
}

/// An inference request's answer: the outputs asked for (each with whether it goes back as
/// binary), the version that answered, and what the access line reports.
pub struct Answer {
    pub outputs: Vec<(wire::Output, bool)>,
    pub version: String,
    pub info: AccessInfo,
}

/// Which model an inference request is for: `name` at `version` (any, if none), and for the
/// pipeline, the version of the default guest it is pinned to (`X-Guest-Digest`), if it is.
pub struct Asked<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub pin: Option<&'a str>,
}

/// Runs `request` on the model it `asked` for. `served_by` is set to the digest of the guest
/// version that ran, before it runs, so a failure names it too; `announced` is the request's
/// call announced while its body arrived ([`announce`]), if it was.
pub async fn run(
    service: &Service,
    asked: Asked<'_>,
    request: &wire::Request,
    progress: &Progress,
    served_by: &mut Option<String>,
    announced: Expected,
) -> Result<Answer, ApiError> {
    let Asked { name, version, pin } = asked;
    let target = resolve(service, name, version)?;
    let (outputs, info, version) = match &target {
        Target::Raw(m) => {
            let (outputs, info) = run_model(service, m, request, progress, announced).await?;
            (outputs, info, target.version().to_string())
        }
        Target::Pipeline(_) => {
            let routed = service.route(GuestChoice::Default, pin)?;
            *served_by = Some(routed.guest.digest.clone());
            // The version that answers: a canary's may differ from the live one's.
            let version = routed.guest.info.version.clone();
            let (outputs, info) = run_pipeline(service, &routed, request, progress, announced).await?;
            (outputs, info, version)
        }
    };
    let outputs = wire::select(outputs, request)?;
    Ok(Answer { outputs, version, info })
}

/// Runs the raw network on the request's one input tensor.
async fn run_model(
    service: &Service,
    model: &Model,
    request: &wire::Request,
    progress: &Progress,
    announced: Expected,
) -> Result<(Vec<wire::Output>, AccessInfo), ApiError> {
    let started = Instant::now();
    let spec = model.manifest.input();
    request.only_inputs(&[spec.name.as_str()])?;
    let input = request.input(&spec.name)?;
    let data = input.fp32_bytes()?;
    let dims: Vec<u32> =
        input.shape.iter().map(|&d| u32::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
            WireError(format!("input '{}' has a dimension too large: {:?}", input.name, input.shape))
        })?;
    let decoded = started.elapsed();
    let output = service.infer(model, Input { dims, data }, progress, announced).await.inspect_err(|_| {
        METRICS.inference_failed(model.name(), "", started.elapsed());
    })?;
    let floats = output.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let out_spec = model.manifest.output();
    let outputs = vec![wire::Output {
        name: out_spec.name.clone(),
        shape: output.dims.iter().map(|&d| u64::from(d)).collect(),
        data: OutputData::Fp32(floats),
    }];
    let info = AccessInfo {
        model: model.name().to_string(),
        guest: None,
        batch_size: output.batch_rows,
        timings: StageTimings {
            instantiate: Duration::ZERO,
            preprocess: decoded,
            queue: output.queue,
            inference: output.inference,
            postprocess: Duration::ZERO,
        },
    };
    Ok((outputs, info))
}

/// Runs the default guest on the request's media: one element is a whole clip (or a single
/// frame), several are frames in time order.
async fn run_pipeline(
    service: &Service,
    routed: &Routed,
    request: &wire::Request,
    progress: &Progress,
    announced: Expected,
) -> Result<(Vec<wire::Output>, AccessInfo), ApiError> {
    let guest = &routed.guest;
    request.only_inputs(&[MEDIA])?;
    let input = request.input(MEDIA)?;
    let elements = input.bytes_elements()?;
    if elements.is_empty() {
        return Err(WireError(format!("input '{MEDIA}' has no elements: send one clip, or frames")).into());
    }
    let declared = match request.parameters.get("content_type") {
        None => None,
        Some(wire::Parameter::Text(t)) => Some(t.clone()),
        Some(other) => {
            return Err(WireError(format!("parameter 'content_type' must be a string, got {other:?}")).into());
        }
    };
    let media = elements
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let content_type = match &declared {
                Some(t) => t.clone(),
                None => media::sniff(&data).map(str::to_string).ok_or_else(|| {
                    WireError(format!(
                        "input '{MEDIA}' element {i} is not {} by its first bytes; \
                         name its type in the request parameter 'content_type'",
                        media::recognised()
                    ))
                })?,
            };
            if !guest.accepts(&content_type) {
                return Err(WireError(format!(
                    "input '{MEDIA}' element {i} is '{content_type:.64}', which guest '{}' does not read; it reads: {}",
                    guest.name,
                    guest.info.accepts.join(", ")
                )));
            }
            Ok(Media { content_type, data })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let segments = segmentation(&request.parameters)?;
    let labels = &guest.info.labels;
    let classified =
        super::v1::run_guest(service, routed, media, labels.len() as u32, segments, progress, announced)
            .await?;
    let in_label_order = |top: &[(String, f32)]| -> Vec<f32> {
        labels.iter().map(|label| top.iter().find(|(l, _)| l == label).map_or(0.0, |(_, s)| *s)).collect()
    };
    let scores = in_label_order(&classified.top_k);
    let mut outputs = vec![
        wire::Output {
            name: LABEL.into(),
            shape: vec![1],
            data: OutputData::Bytes(vec![classified.label.clone().into_bytes()]),
        },
        wire::Output {
            name: SCORES.into(),
            shape: vec![1, labels.len() as u64],
            data: OutputData::Fp32(scores),
        },
    ];
    // Without a timeline asked for, the timeline's outputs are empty, and only sent when named
    // (Triton's clients, perf_analyzer among them, ask for every output the metadata lists).
    let named = |name: &str| request.outputs.as_ref().is_some_and(|o| o.iter().any(|r| r.name == name));
    if segments.is_some() || named(SEGMENTS) || named(SEGMENT_LABELS) {
        let rows = &classified.segments;
        let time = |t: Option<f64>| t.map_or(f32::NAN, |t| t as f32);
        let table = rows
            .iter()
            .flat_map(|s| {
                let bounds = [s.start_frame as f32, s.end_frame as f32, time(s.start_s), time(s.end_s)];
                bounds.into_iter().chain(in_label_order(&s.top_k))
            })
            .collect();
        outputs.push(wire::Output {
            name: SEGMENTS.into(),
            shape: vec![rows.len() as u64, (SEGMENT_COLUMNS + labels.len()) as u64],
            data: OutputData::Fp32(table),
        });
        outputs.push(wire::Output {
            name: SEGMENT_LABELS.into(),
            shape: vec![rows.len() as u64],
            data: OutputData::Bytes(rows.iter().map(|s| s.label.clone().into_bytes()).collect()),
        });
    }
    Ok((outputs, AccessInfo::guest(guest, &classified)))
}

/// The timeline the request parameters `segment` (seconds) and `segment_frames` ask for, as
/// `/v1`'s query does; numbers may come as JSON numbers or strings.
fn segmentation(parameters: &wire::Parameters) -> Result<Option<Segmentation>, ApiError> {
    let text = |key: &str| -> Result<Option<String>, ApiError> {
        match parameters.get(key) {
            None => Ok(None),
            Some(wire::Parameter::Int(n)) => Ok(Some(n.to_string())),
            Some(wire::Parameter::Float(f)) => Ok(Some(f.to_string())),
            Some(wire::Parameter::Text(t)) => Ok(Some(t.clone())),
            Some(other) => {
                Err(WireError(format!("parameter '{key}' must be a number, got {other:?}")).into())
            }
        }
    };
    let (segment, frames) = (text("segment")?, text("segment_frames")?);
    motion_request::segmentation(segment.as_deref(), frames.as_deref()).map_err(|e| WireError(e.0).into())
}

#[cfg(test)]
mod tests {
    use super::version_matches;

    #[test]
    fn a_version_is_named_by_itself_or_by_its_major_number() {
        assert!(version_matches("1.0.0", "1.0.0"));
        assert!(version_matches("1.0.0", "1"));
        assert!(version_matches("0.2.0", "0"));
        assert!(version_matches("1.0.0", "01"));
        for wrong in ["2", "1.0", "1.0.1", "-1", "+1", " 1", "", "x"] {
            assert!(!version_matches("1.0.0", wrong), "{wrong:?}");
        }
    }
}
