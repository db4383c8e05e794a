//! HTTP routes: health, classification, and the JSON contract of each.
//!
//! Architecture invariant: only this module knows axum; it turns requests into calls on the
//! [`Runtime`](crate::runtime::Runtime) and its answers into the documented JSON.

mod access;
mod admin;
pub mod connections;
mod error;
mod oip;
mod oip_codec;
mod openapi;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use admin::AdminToken;
pub use error::ApiError;

use crate::metrics::{GuestInfo, ModelInfo};
use crate::runtime::{Classified, LoadedGuest, Media, Runtime};

/// The server's version, reported by `/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `top_k` when the query does not say.
const DEFAULT_TOP_K: u32 = 3;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Healthy = 1,
    Draining = 2,
}

/// The HTTP layer's settings, fixed at start.
#[derive(Debug)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// Bytes all request bodies being read may hold at once (`--max-upload-memory`).
    pub max_upload_memory: usize,
    /// The slowest upload taken, in bytes per second over each [`UPLOAD_RATE_WINDOW`]
    /// (`--min-upload-rate`; 0 for none).
    pub min_upload_rate: u64,
    /// Classification requests served at once (`--max-in-flight`).
    pub max_in_flight: usize,
    /// From a request's headers to its answer (`--request-timeout`).
    pub request_timeout: Duration,
    /// The admin API's token; `None` hides the admin routes.
    pub admin: Option<AdminToken>,
    /// Whether the admin API would travel in plain text beyond this machine: no TLS, and a
    /// listener on a non-loopback address. It is then refused unless `allow_insecure_admin`.
    pub admin_exposed_in_plain_text: bool,
    pub allow_insecure_admin: bool,
}

/// What every handler shares.
pub struct AppState {
    phase: AtomicU8,
    models_loaded: AtomicU8,
    runtime: OnceLock<Arc<Runtime>>,
    in_flight: Arc<Semaphore>,
    /// The upload memory budget, in KiB.
    uploads: Arc<Semaphore>,
    settings: Settings,
}

impl AppState {
    pub fn new(settings: Settings) -> Arc<AppState> {
        Arc::new(AppState {
            phase: AtomicU8::new(Phase::Starting as u8),
            models_loaded: AtomicU8::new(0),
            runtime: OnceLock::new(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            uploads: Arc::new(Semaphore::new(settings.max_upload_memory.div_ceil(1024))),
            settings,
        })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Healthy,
            _ => Phase::Draining,
        }
    }

    /// Marks the models loaded (reported by `/health` while guests still load).
    pub fn set_models_loaded(&self) {
        self.models_loaded.store(1, Ordering::SeqCst);
    }

    /// Serves with `runtime` from now on and reports healthy.
    pub fn set_ready(&self, runtime: Arc<Runtime>) {
        let _ = self.runtime.set(runtime);
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Healthy as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Turns readiness off for good: the process is shutting down.
    pub fn set_draining(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::SeqCst);
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.settings.max_in_flight - self.in_flight.available_permits()
    }

    /// Takes one of the `--max-in-flight` slots for a classification whose body is in, or
    /// refuses with 503. Only work holds a slot: an upload, however slow, never does.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            ApiError::overloaded(format!(
                "{} requests are in flight, the limit (--max-in-flight)",
                self.settings.max_in_flight
            ))
        })
    }

    /// When a request received at `received` runs out of `--request-timeout`.
    fn deadline(&self, received: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(received) + self.settings.request_timeout
    }

    /// Reads a request's whole body within the limits: `--max-body-bytes` (413), the upload
    /// memory budget (503), `--min-upload-rate` (408, connection closed) and the request's
    /// deadline (408). The budget is taken as bytes arrive, not as declared, so a slow upload
    /// holds only what it has sent, and it is held until the returned [`Upload`] is dropped.
    /// A body refused for its size or the budget is drained first (up to the limit again, for
    /// [`DRAIN_TIMEOUT`]): a refusal sent while the client is still writing reaches many
    /// clients as a reset instead of the answer.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        deadline: tokio::time::Instant,
    ) -> Result<Upload, ApiError> {
        let limit = self.settings.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            // A client waiting for `100 Continue` has not sent the body: it gets the 413 at
            // once (reading the body would invite it to send it).
            let waits_for_continue = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !waits_for_continue {
                drain(body, limit.saturating_mul(2), DRAIN_TIMEOUT).await;
            }
            return Err(ApiError::payload_too_large(limit));
        }
        let mut body = body;
        // Grown as bytes arrive: a declared length is a claim, not a reservation.
        let mut data = BytesMut::with_capacity(declared.map_or(0, |n| n.min(64 * 1024) as usize));
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        let min_rate = self.settings.min_upload_rate;
        let mut window_end = tokio::time::Instant::now() + UPLOAD_RATE_WINDOW;
        let mut window_start_len = 0usize;
        loop {
            let wake = if min_rate > 0 { window_end.min(deadline) } else { deadline };
            let frame = match tokio::time::timeout_at(wake, body.frame()).await {
                Ok(frame) => frame,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiError::body_timeout(self.settings.request_timeout));
                }
                Err(_) => {
                    let received = (data.len() - window_start_len) as u64;
                    if received < min_rate.saturating_mul(UPLOAD_RATE_WINDOW.as_secs()) {
                        crate::metrics::METRICS.uploads_too_slow.inc();
                        return Err(ApiError::upload_too_slow(received, UPLOAD_RATE_WINDOW, min_rate));
                    }
                    window_end += UPLOAD_RATE_WINDOW;
                    window_start_len = data.len();
                    continue;
                }
            };
            let chunk = match frame {
                None => break,
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(format!("could not read the request body: {e}")));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => chunk,
                    Err(_) => continue, // trailers
                },
            };
            let total = data.len() + chunk.len();
            if total > limit {
                drain(body, limit, DRAIN_TIMEOUT).await;
                return Err(ApiError::payload_too_large(limit));
            }
            let wanted = total.div_ceil(1024) - data.len().div_ceil(1024);
            if wanted > 0 {
                let more = u32::try_from(wanted)
                    .ok()
                    .and_then(|n| Arc::clone(&self.uploads).try_acquire_many_owned(n).ok());
                let Some(more) = more else {
                    drain(body, limit, DRAIN_TIMEOUT).await;
                    return Err(ApiError::overloaded(format!(
                        "request bodies being read hold {} bytes, the limit (--max-upload-memory)",
                        self.settings.max_upload_memory
                    )));
                };
                match &mut reserved {
                    Some(held) => held.merge(more),
                    None => reserved = Some(more),
                }
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Upload { bytes: data.freeze(), _reserved: reserved })
    }

    /// Runs the rest of a request within its deadline: past it, 504 (in the error shape `E` of
    /// the route's protocol).
    async fn within_deadline<E: From<ApiError>>(
        &self,
        deadline: tokio::time::Instant,
        handler: impl Future<Output = Result<Response, E>>,
    ) -> Result<Response, E> {
        tokio::time::timeout_at(deadline, handler)
            .await
            .unwrap_or_else(|_| Err(ApiError::request_timeout(self.settings.request_timeout).into()))
    }

    fn ready_runtime(&self) -> Result<&Arc<Runtime>, ApiError> {
        // While draining, readiness is off but requests that still arrive are served: the
        // platform needs the grace period to stop routing here.
        match (self.phase(), self.runtime.get()) {
            (Phase::Healthy | Phase::Draining, Some(runtime)) => Ok(runtime),
            (Phase::Draining, None) => Err(ApiError::not_ready("the server is shutting down")),
            _ => Err(ApiError::not_ready("the server is starting: the model and guests are loading")),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(live))
        .route("/v1/classify", post(classify_default))
        .route("/v1/guests", get(list_guests))
        .route("/v1/guests/{name}/classify", post(classify_named))
        .route("/admin/guests", get(admin::list))
        .route("/admin/guests/{name}", axum::routing::put(admin::put).delete(admin::remove))
        .route("/admin/guests/{name}/rollback", post(admin::rollback))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .merge(oip::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(connections::health_only))
        // Last, so that it wraps every route and both fallbacks.
        .layer(axum::middleware::from_fn(access::track))
        .with_state(state)
}

/// `GET /metrics`: the Prometheus exposition.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let (mut models, mut guests) = (Vec::new(), Vec::new());
    let set = app.runtime.get().map(|runtime| (runtime, runtime.guests()));
    if let Some((runtime, set)) = &set {
        for model in runtime.models().iter() {
            models.push(ModelInfo {
                name: model.name(),
                version: &model.manifest.version,
                sha256: &model.sha256,
                device: format!("{:?}", model.device).to_ascii_lowercase(),
            });
        }
        for (name, slot) in &set.slots {
            let g = &slot.live;
            guests.push(GuestInfo {
                name,
                version: &g.info.version,
                digest: &g.digest,
                model: g.model.name(),
                default: set.default.as_deref() == Some(name.as_str()),
            });
        }
    }
    let body = crate::metrics::METRICS.render(&models, &guests);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Under `/v2` errors take the protocol's shape, `{"error": "…"}`.
fn is_v2(uri: &axum::http::Uri) -> bool {
    uri.path() == "/v2" || uri.path().starts_with("/v2/")
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if is_v2(&uri) {
        let e = ApiError::not_found(
            "no such route; see GET /v2, /v2/health/ready, /v2/models/{model}, POST /v2/models/{model}/infer",
        );
        return oip::V2Error(e).into_response();
    }
    route_not_found().into_response()
}

fn route_not_found() -> ApiError {
    ApiError::not_found(
        "no such route; see GET /health, GET /v1/guests, POST /v1/classify, POST /v1/guests/{name}/classify",
    )
}

async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    );
    if is_v2(&uri) { oip::V2Error(e).into_response() } else { e.into_response() }
}

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
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    let phase = app.phase();
    let (default_guest, guests) = match app.runtime.get() {
        Some(runtime) => {
            let set = runtime.guests();
            let guests = set
                .slots
                .iter()
                .map(|(name, slot)| {
                    let live = &slot.live;
                    (
                        name.clone(),
                        GuestRef { version: live.info.version.clone(), digest: live.digest.clone() },
                    )
                })
                .collect();
            (set.default.clone(), guests)
        }
        None => (None, BTreeMap::new()),
    };
    let body = Health {
        status: match phase {
            Phase::Starting => "starting",
            Phase::Healthy => "healthy",
            Phase::Draining => "draining",
        },
        model_loaded: app.models_loaded.load(Ordering::SeqCst) == 1,
        version: VERSION,
        default_guest,
        guests,
    };
    let status = if phase == Phase::Healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn live() -> Response {
    Json(serde_json::json!({"status": "alive", "version": VERSION})).into_response()
}

/// How long a refused upload is drained before the refusal is sent anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The window `--min-upload-rate` is measured over: an upload that sends less than
/// `rate × window` bytes in any one of them is refused with 408.
pub const UPLOAD_RATE_WINDOW: Duration = Duration::from_secs(5);

/// A request body read whole, with its share of the upload memory budget (returned on drop).
pub(crate) struct Upload {
    pub bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

/// Reads and discards a body, up to `limit` bytes or `timeout`.
async fn drain(body: Body, limit: usize, timeout: Duration) {
    let discard = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, discard).await;
}

/// What a client may know of a live guest.
#[derive(Serialize)]
struct PublicGuest<'a> {
    name: &'a str,
    default: bool,
    version: &'a str,
    digest: &'a str,
    description: &'a str,
    model: ModelId<'a>,
    input_shape: &'a [i64],
    labels: &'a [String],
    accepts: &'a [String],
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
async fn list_guests(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let runtime = app.ready_runtime()?;
    let set = runtime.guests();
    let limits = runtime.limits();
    let guests: Vec<PublicGuest> = set
        .slots
        .iter()
        .map(|(name, slot)| {
            let g = &slot.live;
            PublicGuest {
                name,
                default: set.default.as_deref() == Some(name.as_str()),
                version: &g.info.version,
                digest: &g.digest,
                description: &g.info.name,
                model: ModelId { name: g.model.name(), version: &g.model.manifest.version },
                input_shape: &g.info.input_shape,
                labels: &g.info.labels,
                accepts: &g.info.accepts,
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
            }
        })
        .collect();
    Ok(Json(serde_json::json!({"default_guest": set.default, "guests": guests})).into_response())
}

type TopKQuery = Result<Query<HashMap<String, String>>, QueryRejection>;

async fn classify_default(
    State(app): State<Arc<AppState>>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    classify_upload(&app, None, query, headers, body).await
}

async fn classify_named(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    classify_upload(&app, Some(&name), query, headers, body).await
}

/// Serves one classification with guest `name` (the default guest when `None`): reads the
/// body, then takes an in-flight slot and classifies, all within the request's deadline.
async fn classify_upload(
    app: &AppState,
    name: Option<&str>,
    query: TopKQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let deadline = app.deadline(received);
    let upload = app.read_body(&headers, body, deadline).await?;
    let _slot = app.admit()?;
    app.within_deadline(deadline, async {
        let runtime = app.ready_runtime()?;
        let guests = runtime.guests();
        let guest = match name {
            None => {
                guests.default_guest().ok_or_else(|| ApiError::not_ready("no default guest is loaded"))?
            }
            Some(name) => guests.get(name).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no guest named '{name:.64}' (loaded: {})",
                    guests.names().join(", ")
                ))
            })?,
        };
        classify(runtime, guest, query, &headers, upload.bytes, received).await
    })
    .await
}

/// Classifies an upload already read. The body is read before any other check: a refusal
/// sent while the client is still writing makes many clients report a broken pipe instead of
/// the answer, so only a body over the limit is refused before it is read.
async fn classify(
    runtime: &Runtime,
    guest: &Arc<LoadedGuest>,
    query: TopKQuery,
    headers: &HeaderMap,
    bytes: Bytes,
    received: Instant,
) -> Result<Response, ApiError> {
    let labels = guest.info.labels.len() as u32;
    let top_k = parse_top_k(query, labels)?;

    let declared = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let Some(content_type) = declared.filter(|t| guest.accepts(t)).map(str::to_string) else {
        return Err(ApiError::unsupported_media(declared, &guest.name, &guest.info.accepts));
    };

    let media = motion_request::media(&content_type, bytes)
        .map_err(|e| ApiError::bad_request(e.0))?
        .into_iter()
        .map(|part| Media { content_type: part.content_type, data: part.data.into() })
        .collect();

    let classified = run_guest(runtime, guest, media, top_k).await?;
    let mut response = Json(ClassifyResponse::new(guest, &classified, received.elapsed())).into_response();
    response.extensions_mut().insert(access::AccessInfo::guest(guest, &classified));
    Ok(response)
}

/// Runs `guest` on `media` (for `/v1` and `/v2` alike); a failure that is the server's or the
/// guest's, not the client's, is logged.
async fn run_guest(
    runtime: &Runtime,
    guest: &LoadedGuest,
    media: Vec<Media>,
    top_k: u32,
) -> Result<Classified, ApiError> {
    runtime.classify(guest, media, top_k).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.status.is_server_error() {
            tracing::warn!(guest = %guest.name, code = e.code, error = %e.message, "classification failed");
        }
        e
    })
}

/// `top_k` from the query: an integer in 1..=labels, default 3.
fn parse_top_k(query: TopKQuery, labels: u32) -> Result<u32, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    motion_request::top_k(params.get("top_k").map(String::as_str), labels, DEFAULT_TOP_K)
        .map_err(|e| ApiError::bad_request(e.0))
}

#[derive(Serialize)]
struct ClassifyResponse<'a> {
    label: &'a str,
    score: f32,
    top_k: Vec<LabelScore<'a>>,
    frames_total: u32,
    frames_used: u32,
    guest: GuestId<'a>,
    model: ModelId<'a>,
    /// Rows in the forward pass this request's input ran in, other requests' included.
    batch_size: usize,
    timings_ms: Timings,
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

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl<'a> ClassifyResponse<'a> {
    fn new(guest: &'a LoadedGuest, c: &'a Classified, total: Duration) -> Self {
        ClassifyResponse {
            label: &c.label,
            score: c.score,
            top_k: c.top_k.iter().map(|(label, score)| LabelScore { label, score: *score }).collect(),
            frames_total: c.frames_total,
            frames_used: c.frames_used,
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
