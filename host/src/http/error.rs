//! The one HTTP error type: each kind maps to its status and the JSON body
//! `{"error": {"code": "…", "message": "…"}}`. Internal details go to the log, not the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;
use motion_model::BackendError;
use motion_runtime::{GuestError, SetError};

/// The code of a body that broke off (see [`ApiError::body_incomplete`]).
pub const BODY_INCOMPLETE: &str = "body_incomplete";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Why a guest was rejected.
    pub reasons: Vec<String>,
    /// The media types accepted, on a 415.
    pub accepted: Vec<String>,
    pub retry_after_secs: Option<u32>,
    /// Asks for bearer credentials (on a 401).
    pub www_authenticate: bool,
    /// Closes the connection after the answer (HTTP/1.1 `Connection: close`).
    pub close_connection: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    reasons: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    accepted: &'a [String],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            reasons: Vec::new(),
            accepted: Vec::new(),
            retry_after_secs: None,
            www_authenticate: false,
            close_connection: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
        )
    }

    /// 503 for a request beyond a capacity limit; the message names the limit.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
        e.retry_after_secs = Some(1);
        e
    }

    /// 408 for a body that did not arrive within the request's deadline (`source` names the
    /// limit that set it).
    pub fn body_timeout(limit: std::time::Duration, source: &str) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {} s ({source})", limit.as_secs_f64()),
        )
    }

    /// 400 for a body that broke off: the client stopped sending or reset the stream.
    pub fn body_incomplete(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            BODY_INCOMPLETE,
            format!("could not read the request body: {reason}"),
        )
    }

    /// 408 for an upload slower than `--min-upload-rate`; the connection is closed.
    pub fn upload_too_slow(received: u64, window: std::time::Duration, min_rate: u64) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_too_slow",
            format!(
                "the request body arrived too slowly: {received} bytes in {} s, under the minimum of {min_rate} bytes/s (--min-upload-rate)",
                window.as_secs()
            ),
        );
        e.close_connection = true;
        e
    }

    /// 504 for a request past its deadline; `source` names the limit, `during` says where it
    /// was stopped.
    pub fn request_timeout(limit: std::time::Duration, source: &str, during: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} s ({source}){during}", limit.as_secs_f64()),
        )
    }

    pub fn not_ready(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
        e.retry_after_secs = Some(1);
        e
    }

    /// 415 for a media type the guest does not read, listing what it does; a video in another
    /// format gets the ffmpeg line that turns it into one the guest reads (H.264 in MP4, or Y4M).
    pub fn unsupported_media(content_type: Option<&str>, guest: &str, accepted: &[String]) -> Self {
        let what = match content_type {
            Some(t) => format!("media type '{t}' is not accepted by guest '{guest}'"),
            None => "the request has no Content-Type".to_string(),
        };
        let mut message = format!("{what}; accepted: {}", accepted.join(", "));
        let is_video = content_type.is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("video/"));
        let accepts = |t: &str| accepted.iter().any(|a| a == t);
        if is_video && accepts("video/mp4") {
            message.push_str(
                "; to send another video format, convert it to H.264 in MP4: \
                 ffmpeg -i clip.webm -c:v libx264 -pix_fmt yuv420p clip.mp4",
            );
        } else if is_video && accepts("video/x-yuv4mpeg") {
            message.push_str(
                "; to send a video, pipe it through ffmpeg as Y4M: ffmpeg -i clip.mp4 -f yuv4mpegpipe - | \
                 curl --data-binary @- -H 'Content-Type: video/x-yuv4mpeg' …/v1/classify",
            );
        }
        let mut e = Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message);
        e.accepted = accepted.to_vec();
        e
    }
}

impl From<GuestError> for ApiError {
    fn from(e: GuestError) -> Self {
        let message = e.to_string();
        match e {
            GuestError::BadInput(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_media", message)
            }
            GuestError::BadRequest(_) => Self::bad_request(message),
            GuestError::Unsupported(_) => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
            }
            GuestError::Rejected { reasons, .. } => {
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "guest_rejected", message);
                err.reasons = reasons;
                err
            }
            GuestError::Timeout { .. } => Self::new(StatusCode::GATEWAY_TIMEOUT, "guest_timeout", message),
            GuestError::Busy(_) => Self::overloaded(message),
            GuestError::Read { .. }
            | GuestError::Inference { .. }
            | GuestError::Trap { .. }
            | GuestError::Limit { .. }
            | GuestError::InvalidOutput { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_fault", message)
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotReady(message) => Self::not_ready(message),
            ServiceError::UnknownGuest { .. } | ServiceError::UnknownDigest { .. } => {
                Self::not_found(e.to_string())
            }
            ServiceError::Guest(e) => e.into(),
            ServiceError::Model(e) => e.into(),
            ServiceError::Set(e) => e.into(),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::InvalidInput(m) => Self::bad_request(m),
            BackendError::Busy(_) => Self::overloaded(e.to_string()),
            other => {
                tracing::error!(error = %other, "inference failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "inference_failed",
                    "inference failed; see the server log",
                )
            }
        }
    }
}

impl From<SetError> for ApiError {
    fn from(e: SetError) -> Self {
        match e {
            SetError::Unknown(_) => Self::not_found(e.to_string()),
            SetError::NoHistory(_)
            | SetError::IsDefault(_)
            | SetError::NoCanary(_)
            | SetError::NothingToCanary(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            SetError::Share(_) => Self::bad_request(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                reasons: &self.reasons,
                accepted: &self.accepted,
            },
        };
        let response = (self.status, Json(body)).into_response();
        self.finish(response)
    }
}

impl ApiError {
    /// Adds what every error response carries, whatever the shape of its body: `Retry-After`,
    /// `WWW-Authenticate`, and the code for the access line.
    pub(super) fn finish(&self, mut response: Response) -> Response {
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close_connection {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.www_authenticate {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(super::access::ErrorCode(self.code));
        response
    }
}
