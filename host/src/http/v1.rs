//! `/health` and the `/v1` API: readiness for the platform, the live guests, and
//! classification of an upload with the default or a named guest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::body::Upload;
use super::work::Work;
use super::{ApiError, AppState, VERSION, access, ms};
use crate::service::{GuestChoice, Phase, Service};
use motion_model::{Expected, Progress};
use motion_runtime::{Classified, LoadedGuest, Media, Routed, Segmentation};

/// `top_k` when the query does not say.
const DEFAULT_TOP_K: u32 = 3;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    model_loaded: bool,
    version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_guest: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    guests: BTreeMap<String, GuestRef>,
}

#[derive(Serialize)]
struct GuestRef {
    version: String,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<CanaryRef>,
}

/// A canary beside a live version: which version, and its share of the traffic.
#[derive(Serialize)]
struct CanaryRef {
    version: String,
    digest: String,
    percent: u8,
}

impl CanaryRef {
    fn of(set: &motion_runtime::GuestSet, name: &str) -> Option<CanaryRef> {
        set.canary(name).map(|c| CanaryRef {
            version: c.guest.info.version.clone(),
            digest: c.guest.digest.clone(),
            percent: c.percent,
        })
    }
}

pub(super) async fn health(State(app): State<Arc<AppState>>) -> Response {
    let phase = app.service.phase();
    let (default_guest, guests) = match app.service.live_guests() {
        Some(set) => {
            let guests = set
                .live()
                .map(|(name, live)| {
                    let version = live.info.version.clone();
                    let canary = CanaryRef::of(&set, name);
                    (name.to_string(), GuestRef { version, digest: live.digest.clone(), canary })
                })
                .collect();
            (set.default_name().map(str::to_string), guests)
        }
        None => (None, BTreeMap::new()),
    };
    let body = Health {
        status: match phase {
            Phase::Starting => "starting",
            Phase::Healthy => "healthy",
            Phase::Draining => "draining",
        },
        model_loaded: app.service.models_loaded(),
        version: VERSION,
        default_guest,
        guests,
    };
    let status = if phase == Phase::Healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub(super) async fn live() -> Response {
    Json(serde_json::json!({"status": "alive", "version": VERSION})).into_response()
}

/// What a client may know of a live guest.
#[derive(Serialize)]
struct PublicGuest<'a> {
    name: &'a str,
    default: bool,
    version: &'a str,
    digest: &'a str,
    /// The `motion:guest` world it exports: `motion:guest@0.2.0` answers timelines.
    world: &'static str,
    description: &'a str,
    model: ModelId<'a>,
    input_shape: &'a [i64],
    labels: &'a [String],
    accepts: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<CanaryRef>,
    limits: PublicLimits,
}

#[derive(Serialize)]
struct PublicLimits {
    max_body_bytes: usize,
    memory_bytes: usize,
    deadline_ms: u128,
    max_instances: usize,
    max_tables: usize,
    max_table_elements: usize,
    max_transfer_bytes: usize,
    max_result_bytes: usize,
    max_nn_calls: u32,
    max_nn_bytes: usize,
}

/// `GET /v1/guests`: every live guest, what it reads and returns, and the limits on it.
pub(super) async fn list_guests(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let set = app.service.guests()?;
    let limits = app.service.limits()?;
    let guests: Vec<PublicGuest> = set
        .live()
        .map(|(name, g)| PublicGuest {
            name,
            default: set.is_default(name),
            version: &g.info.version,
            digest: &g.digest,
            world: g.world(),
            description: &g.info.name,
            model: ModelId { name: g.model.name(), version: &g.model.manifest.version },
            input_shape: &g.info.input_shape,
            labels: &g.info.labels,
            accepts: &g.info.accepts,
            canary: CanaryRef::of(&set, name),
            limits: PublicLimits {
                max_body_bytes: app.settings.max_body_bytes,
                memory_bytes: limits.memory_bytes,
                deadline_ms: limits.deadline.as_millis(),
                max_instances: limits.instances,
                max_tables: limits.tables,
                max_table_elements: limits.table_elements,
                max_transfer_bytes: limits.transfer_bytes,
                max_result_bytes: limits.result_bytes,
                max_nn_calls: limits.nn_calls,
                max_nn_bytes: limits.nn_bytes,
            },
        })
        .collect();
    Ok(Json(serde_json::json!({"default_guest": set.default_name(), "guests": guests})).into_response())
}

type TopKQuery = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(super) async fn classify_default(
    State(app): State<Arc<AppState>>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    classify_upload(&app, GuestChoice::Default, query, headers, body).await
}

pub(super) async fn classify_named(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    classify_upload(&app, GuestChoice::Named(&name), query, headers, body).await
}

/// Serves one classification with the chosen guest: reads the body, then takes an in-flight
/// slot and classifies, all within the request's deadline. If the client goes away first, the
/// [`Work`] dropped with this future stops what is left.
async fn classify_upload(
    app: &AppState,
    choice: GuestChoice<'_>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let work = Work::start();
    let answer = classify_within_deadline(app, &work, choice, query, headers, body).await;
    work.finish();
    answer
}

async fn classify_within_deadline(
    app: &AppState,
    work: &Work,
    choice: GuestChoice<'_>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let (deadline, asked) = app.deadline(received).asked_by(received, &headers);
    let announced = app.service.announce(choice);
    let upload = app
        .read_body_announced(&headers, body, &deadline, announced)
        .await
        .inspect_err(|e| work.body_failed(e))?;
    asked?;
    let _slot = app.admit()?;
    work.within(&deadline, async {
        let routed = app.service.route(choice, pinned_digest(&headers)?)?;
        let answer =
            classify(&app.service, &routed, query, &headers, upload, received, work.progress()).await;
        Ok(served_by(answer.unwrap_or_else(IntoResponse::into_response), &routed.guest.digest))
    })
    .await
}

/// Names the guest version that answered (`X-Guest-Digest`), failures included: with a
/// canary running, a client can tell which version it reached.
pub(super) fn served_by(mut response: Response, digest: &str) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(digest) {
        response.headers_mut().insert(GUEST_DIGEST, value);
    }
    response
}

/// The header that pins a request to one live or canary version of its guest, for debugging.
pub(super) const GUEST_DIGEST: HeaderName = HeaderName::from_static(GUEST_DIGEST_NAME);
/// Its name, which gRPC's metadata carries too.
pub(super) const GUEST_DIGEST_NAME: &str = "x-guest-digest";

/// The version digest a client pinned with `X-Guest-Digest`, if any.
pub(super) fn pinned_digest(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    digest_pin(headers.get(GUEST_DIGEST).map(|v| v.to_str().ok()))
}

/// The pin an `X-Guest-Digest` value asks for (`None`: no header; `Some(None)`: one that is
/// not text): the header over HTTP, the metadata over gRPC.
pub(super) fn digest_pin(value: Option<Option<&str>>) -> Result<Option<&str>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => v.filter(|d| d.starts_with("sha256:")).map(Some).ok_or_else(|| {
            ApiError::bad_request("header X-Guest-Digest must be a digest like 'sha256:<64 hex digits>'")
        }),
    }
}

/// Classifies an upload already read. The body is read before any other check: a refusal
/// sent while the client is still writing makes many clients report a broken pipe instead of
/// the answer, so only a body over the limit is refused before it is read.
async fn classify(
    service: &Service,
    routed: &Routed,
    query: TopKQuery,
    headers: &HeaderMap,
    upload: Upload,
    received: Instant,
    progress: &Progress,
) -> Result<Response, ApiError> {
    let Upload { bytes, announced, .. } = upload;
    let guest = &routed.guest;
    let labels = guest.info.labels.len() as u32;
    let (top_k, segments) = parse_query(query, labels)?;

    let declared = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let Some(content_type) = declared.filter(|t| guest.accepts(t)).map(str::to_string) else {
        return Err(ApiError::unsupported_media(declared, &guest.name, &guest.info.accepts));
    };

    let media = motion_request::media(&content_type, bytes)
        .map_err(|e| ApiError::bad_request(e.0))?
        .into_iter()
        .map(|part| Media { content_type: part.content_type, data: part.data.into() })
        .collect();

    let classified = run_guest(service, routed, media, top_k, segments, progress, announced).await?;
    let response = ClassifyResponse::new(guest, &classified, segments.is_some(), received.elapsed());
    let mut response = Json(response).into_response();
    response.extensions_mut().insert(access::AccessInfo::guest(guest, &classified));
    Ok(response)
}

/// Runs the routed guest version on `media` (for `/v1` and `/v2` alike) and counts the answer
/// against that version; a failure that is the server's or the guest's, not the client's, is
/// logged.
pub(super) async fn run_guest(
    service: &Service,
    routed: &Routed,
    media: Vec<Media>,
    top_k: u32,
    segments: Option<Segmentation>,
    progress: &Progress,
    announced: Expected,
) -> Result<Classified, ApiError> {
    let guest = &routed.guest;
    let started = Instant::now();
    let result = service.classify(routed, media, top_k, segments, progress, announced).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.status.is_server_error() {
            tracing::warn!(guest = %guest.name, digest = %guest.digest, role = routed.role.name(), code = e.code, error = %e.message, "classification failed");
        }
        e
    });
    let code = result.as_ref().map_or_else(|e| e.code, |_| "ok");
    crate::metrics::METRICS.version_answered(&guest.name, &guest.digest, code, started.elapsed());
    if result.is_err() {
        crate::metrics::METRICS.inference_failed(guest.model.name(), &guest.name, started.elapsed());
    }
    result
}

/// `top_k` from the query (an integer in 1..=labels, default 3), and the timeline it asks for
/// (`segment` seconds or `segment_frames`).
fn parse_query(query: TopKQuery, labels: u32) -> Result<(u32, Option<Segmentation>), ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let get = |key: &str| params.get(key).map(String::as_str);
    let top_k =
        motion_request::top_k(get("top_k"), labels, DEFAULT_TOP_K).map_err(|e| ApiError::bad_request(e.0))?;
    let segments = motion_request::segmentation(get("segment"), get("segment_frames"))
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok((top_k, segments))
}

#[derive(Serialize)]
struct ClassifyResponse<'a> {
    label: &'a str,
    score: f32,
    top_k: Vec<LabelScore<'a>>,
    frames_total: u32,
    frames_used: u32,
    /// The timeline's windows, when the request asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<Vec<SegmentJson<'a>>>,
    guest: GuestId<'a>,
    model: ModelId<'a>,
    /// Rows in the forward pass this request's input ran in, other requests' included.
    batch_size: usize,
    timings_ms: Timings,
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    start_frame: u32,
    end_frame: u32,
    start_s: Option<f64>,
    end_s: Option<f64>,
    label: &'a str,
    score: f32,
    top_k: Vec<LabelScore<'a>>,
}

#[derive(Serialize)]
struct LabelScore<'a> {
    label: &'a str,
    score: f32,
}

#[derive(Serialize)]
struct GuestId<'a> {
    name: &'a str,
    version: &'a str,
    digest: &'a str,
}

#[derive(Serialize)]
struct ModelId<'a> {
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct Timings {
    /// Store and instance set-up, counted within `preprocess`.
    instantiate: f64,
    preprocess: f64,
    queue: f64,
    inference: f64,
    postprocess: f64,
    total: f64,
}

impl<'a> ClassifyResponse<'a> {
    fn new(guest: &'a LoadedGuest, c: &'a Classified, segments: bool, total: Duration) -> Self {
        let ranking = |top: &'a [(String, f32)]| {
            top.iter().map(|(label, score)| LabelScore { label, score: *score }).collect()
        };
        ClassifyResponse {
            label: &c.label,
            score: c.score,
            top_k: ranking(&c.top_k),
            frames_total: c.frames_total,
            frames_used: c.frames_used,
            segments: segments.then(|| {
                c.segments
                    .iter()
                    .map(|s| SegmentJson {
                        start_frame: s.start_frame,
                        end_frame: s.end_frame,
                        start_s: s.start_s,
                        end_s: s.end_s,
                        label: &s.label,
                        score: s.score,
                        top_k: ranking(&s.top_k),
                    })
                    .collect()
            }),
            guest: GuestId { name: &guest.name, version: &guest.info.version, digest: &guest.digest },
            model: ModelId { name: guest.model.name(), version: &guest.model.manifest.version },
            batch_size: c.batch_size,
            timings_ms: Timings {
                instantiate: ms(c.timings.instantiate),
                preprocess: ms(c.timings.preprocess),
                queue: ms(c.timings.queue),
                inference: ms(c.timings.inference),
                postprocess: ms(c.timings.postprocess),
                total: ms(total),
            },
        }
    }
}
