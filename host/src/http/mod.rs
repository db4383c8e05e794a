//! HTTP: the routes of each protocol and their contracts, over the application
//! [`Service`](crate::service::Service).
//!
//! Architecture invariant: only this module (and `serve`, which runs the servers) knows axum
//! and tonic; handlers turn requests into calls on the service and its answers into the
//! documented JSON or messages. `mod.rs` holds what every route shares: the settings,
//! admission to a `--max-in-flight` slot, the routers and the fallbacks; `body.rs` reads
//! bodies within their limits; `work.rs` holds an inference request's deadline and what
//! happens when its client goes away; `v1.rs` is the `/health` and `/v1` API; `inference.rs`
//! the Open Inference Protocol's models, which `oip.rs` serves over REST and `grpc.rs` over
//! gRPC; `admin.rs` the admin API.

mod access;
mod admin;
mod body;
pub mod connections;
mod error;
mod grpc;
mod inference;
mod oip;
mod oip_codec;
mod openapi;
mod v1;
mod work;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use admin::AdminToken;
pub use error::ApiError;

use crate::metrics::{GuestInfo, ModelInfo};
use crate::service::Service;

/// The server's version, reported by `/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The HTTP layer's settings, fixed at start.
#[derive(Debug)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// Bytes all request bodies being read may hold at once (`--max-upload-memory`).
    pub max_upload_memory: usize,
    /// The slowest upload taken, in bytes per second over each [`UPLOAD_RATE_WINDOW`](body::UPLOAD_RATE_WINDOW)
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
    service: Arc<Service>,
    in_flight: Arc<Semaphore>,
    /// The upload memory budget, in KiB.
    uploads: Arc<Semaphore>,
    /// Room for bodies sized to their declared length before they arrive, in KiB, as much as
    /// the upload budget (`http/body.rs`).
    presized: Arc<Semaphore>,
    settings: Settings,
}

impl AppState {
    pub fn new(service: Arc<Service>, settings: Settings) -> Arc<AppState> {
        let upload_kib = settings.max_upload_memory.div_ceil(1024);
        Arc::new(AppState {
            service,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            uploads: Arc::new(Semaphore::new(upload_kib)),
            presized: Arc::new(Semaphore::new(upload_kib)),
            settings,
        })
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
    fn deadline(&self, received: Instant) -> work::Deadline {
        work::Deadline::server(received, self.settings.request_timeout)
    }
}

/// Milliseconds with microsecond precision, as every timing in the API is written.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(v1::health))
        .route("/health/ready", get(v1::health))
        .route("/health/live", get(v1::live))
        .route("/v1/classify", post(v1::classify_default))
        .route("/v1/guests", get(v1::list_guests))
        .route("/v1/guests/{name}/classify", post(v1::classify_named))
        .route("/admin/guests", get(admin::list))
        .route("/admin/guests/{name}", axum::routing::put(admin::put).delete(admin::remove))
        .route("/admin/guests/{name}/rollback", post(admin::rollback))
        .route("/admin/guests/{name}/promote", post(admin::promote))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .merge(oip::routes())
        .merge(grpc::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(connections::health_only))
        // Last, so that it wraps every route and both fallbacks.
        .layer(axum::middleware::from_fn(access::track))
        .with_state(state)
}

/// The router of a `--grpc-bind` listener: the gRPC services alone, through the same layers.
pub fn grpc_router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(grpc::routes())
        .fallback(grpc::not_served)
        .layer(axum::middleware::from_fn(connections::health_only))
        .layer(axum::middleware::from_fn(access::track))
        .with_state(state)
}

/// `GET /metrics`: the Prometheus exposition.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let (mut models, mut guests) = (Vec::new(), Vec::new());
    let loaded = app.service.loaded();
    if let Some((set, served)) = &loaded {
        for model in served {
            models.push(ModelInfo {
                name: model.name(),
                version: &model.manifest.version,
                sha256: &model.sha256,
                device: model.device.to_string(),
                precision: model.precision.name(),
            });
        }
        for (name, g) in set.live() {
            let canary = set.canary(name).map(|c| (&c.guest, "canary"));
            for (g, role) in std::iter::once((g, "live")).chain(canary) {
                guests.push(GuestInfo {
                    name,
                    version: &g.info.version,
                    digest: &g.digest,
                    model: g.model.name(),
                    default: set.is_default(name),
                    role,
                });
            }
        }
        crate::metrics::METRICS.keep_versions(&set.digests());
    }
    let body = crate::metrics::METRICS.render(&models, &guests, motion_runtime::open_stores());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Under `/v2` errors take the protocol's shape, `{"error": "…"}`.
fn is_v2(uri: &axum::http::Uri) -> bool {
    uri.path() == "/v2" || uri.path().starts_with("/v2/")
}

async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    if access::is_grpc(&headers) {
        let message = format!(
            "no gRPC service at '{:.64}'; served: {}, grpc.health.v1.Health",
            uri.path(),
            grpc::SERVICE
        );
        return grpc::unimplemented(message);
    }
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
