//! What every request passes through: its id (taken from `X-Request-Id` when usable, else
//! generated, and echoed back), a tracing span carrying that id (so the guest's output and any
//! trap logged while serving it are tagged with it), the in-flight gauge, the request counter
//! and latency histogram, and one access log line when the response is ready.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::ms;
use crate::metrics::METRICS;
use motion_runtime::{Classified, LoadedGuest, StageTimings};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a handler tells the access line about the inference it ran (a response extension).
#[derive(Debug, Clone)]
pub struct AccessInfo {
    pub model: String,
    /// The guest's name and version; `None` for the raw model.
    pub guest: Option<(String, String)>,
    pub batch_size: usize,
    pub timings: StageTimings,
}

impl AccessInfo {
    /// A guest's classification.
    pub fn guest(guest: &LoadedGuest, classified: &Classified) -> AccessInfo {
        AccessInfo {
            model: guest.model.name().to_string(),
            guest: Some((guest.name.clone(), guest.info.version.clone())),
            batch_size: classified.batch_size,
            timings: classified.timings.clone(),
        }
    }
}

/// Marks a gRPC stream's response: its messages are counted as calls of their own.
#[derive(Debug, Clone, Copy)]
pub struct Stream;

/// The error code of a failed request (a response extension set by `ApiError`).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// A client's request id if it is 1–128 characters of `[A-Za-z0-9._:/+=-]` (no room for log
/// injection), else a new UUID.
fn request_id(offered: Option<&HeaderValue>) -> HeaderValue {
    let usable = |v: &&HeaderValue| {
        let b = v.as_bytes();
        (1..=128).contains(&b.len()) && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._:/+=-".contains(c))
    };
    match offered.filter(usable) {
        Some(v) => v.clone(),
        None => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a header value"),
    }
}

/// The method as a bounded label: clients may send any token.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Decrements the in-flight gauge however the request ends (a dropped connection included).
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        METRICS.http_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.http_in_flight.dec();
    }
}

pub async fn track(request: Request, next: Next) -> Response {
    let received = Instant::now();
    let _in_flight = InFlight::enter();
    let id = request_id(request.headers().get(&REQUEST_ID));
    let id_text = id.to_str().unwrap_or_default().to_string();
    // The route template, never the raw path: the label stays bounded.
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = method_label(request.method());
    let path: String = request.uri().path().chars().take(256).collect();

    let span = tracing::info_span!("request", request_id = %id_text);
    let mut response = next.run(request).instrument(span.clone()).await;
    let total = received.elapsed();
    response.headers_mut().insert(REQUEST_ID, id);

    let status = response.status().as_u16();
    METRICS.http_duration.with_label_values(&[route.as_str()]).observe(total.as_secs_f64());
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    // A gRPC call's outcome is its grpc-status: in the headers of an error answered at once,
    // else in the trailers (OK for a unary call; a stream's messages are counted one by one).
    let grpc_code = is_grpc(response.headers()).then(|| {
        let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
        grpc_code_name(code.unwrap_or(0))
    });
    match grpc_code {
        // A stream's messages are counted one by one ([`stream_message`]), not the stream.
        Some(_) if response.extensions().get::<Stream>().is_some() => {}
        Some(grpc_code) => METRICS.grpc_requests.with_label_values(&[route.as_str(), grpc_code]).inc(),
        None => METRICS.http_requests.with_label_values(&[route.as_str(), method, &status.to_string()]).inc(),
    }
    let _entered = span.enter();
    let line = Line { method, route: &route, path: &path, status, code, grpc_code };
    line.write(response.extensions().get::<AccessInfo>(), total);
    response
}

/// What every access line says of its request.
struct Line<'a> {
    method: &'a str,
    route: &'a str,
    path: &'a str,
    status: u16,
    code: Option<&'a str>,
    grpc_code: Option<&'a str>,
}

impl Line<'_> {
    /// Writes the line, with the inference's model, guest, batch and stages when it ran one
    /// (and records those stages' metrics).
    fn write(&self, info: Option<&AccessInfo>, total: Duration) {
        let Line { method, route, path, status, code, grpc_code } = *self;
        let Some(info) = info else {
            tracing::info!(target: "access", method, route, path, status, code, grpc_code, total_ms = ms(total), "{method} {path} {status}");
            return;
        };
        let (guest, guest_version) = info.guest.clone().unzip();
        let t = &info.timings;
        let stages = [
            ("queue", t.queue),
            ("preprocess", t.preprocess),
            ("inference", t.inference),
            ("postprocess", t.postprocess),
            ("total", total),
        ];
        METRICS.observe_stages(&info.model, guest.as_deref().unwrap_or(""), &stages);
        tracing::info!(
            target: "access",
            method,
            route,
            path,
            status,
            code,
            grpc_code,
            model = %info.model,
            guest,
            guest_version,
            batch_size = info.batch_size,
            queue_ms = ms(t.queue),
            preprocess_ms = ms(t.preprocess),
            inference_ms = ms(t.inference),
            postprocess_ms = ms(t.postprocess),
            total_ms = ms(total),
            "{method} {path} {status}"
        );
    }
}

/// One message of a gRPC stream, answered: its own access line (in a span with its request
/// id, the message's `id` when usable), counted by its status code.
pub fn stream_message(route: &str, id: &str, code: i32, info: Option<&AccessInfo>, total: Duration) {
    let id = request_id(HeaderValue::from_str(id).ok().as_ref());
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
    let _entered = span.enter();
    let grpc_code = grpc_code_name(code);
    METRICS.grpc_requests.with_label_values(&[route, grpc_code]).inc();
    let line =
        Line { method: "POST", route, path: route, status: 200, code: None, grpc_code: Some(grpc_code) };
    line.write(info, total);
}

/// Whether a request or response is a gRPC call, by its content type.
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC status code's name, as the specification writes it.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}
