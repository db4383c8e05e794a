//! An inference request's work, from its handler's side: its deadline (the server's
//! `--request-timeout`, tightened by the client's `X-Request-Timeout` or the `/v2` `timeout`
//! parameter), and what happens when it is given up on. A client that goes away (an HTTP/1.1
//! connection closed, an HTTP/2 stream reset) makes hyper drop the handler's future: the guest
//! call in it stops, its in-flight slot and upload budget go back, and the [`Work`] it held,
//! dropped unfinished, marks the request abandoned, so rows still in the batch queue never
//! run. Each cancellation is counted by the stage it reached and logged once.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName};

use super::ApiError;
use crate::metrics::METRICS;
use motion_model::{Progress, Stage};

/// The header a client sets its own deadline with, in seconds.
pub const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

/// What set a request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Server,
    Header,
    Parameter,
    GrpcTimeout,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Server => "--request-timeout",
            Source::Header => "X-Request-Timeout",
            Source::Parameter => "the request's 'timeout' parameter",
            Source::GrpcTimeout => "grpc-timeout",
        }
    }
}

/// When a request must be answered by, and which limit says so.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    pub limit: Duration,
    pub source: Source,
}

impl Deadline {
    /// The server's deadline for a request received at `received`.
    pub fn server(received: Instant, limit: Duration) -> Deadline {
        Deadline { at: tokio::time::Instant::from_std(received) + limit, limit, source: Source::Server }
    }

    /// This deadline, or `limit` from `received` if that comes first.
    pub fn tightened(self, received: Instant, limit: Option<Duration>, source: Source) -> Deadline {
        match limit {
            Some(limit) if limit < self.limit => {
                Deadline { at: tokio::time::Instant::from_std(received) + limit, limit, source }
            }
            _ => self,
        }
    }

    /// This deadline tightened by the client's `X-Request-Timeout`. A malformed header leaves
    /// it as it is and comes back as the error to answer once the body is in.
    pub fn asked_by(self, received: Instant, headers: &HeaderMap) -> (Deadline, Result<(), ApiError>) {
        match header_timeout(headers) {
            Ok(own) => (self.tightened(received, own, Source::Header), Ok(())),
            Err(e) => (self, Err(e)),
        }
    }

    /// What the client is told when its body did not arrive in time (408).
    pub fn body_timeout(&self) -> ApiError {
        ApiError::body_timeout(self.limit, self.source.name())
    }

    /// What the client is told when its request ran out of time in `stage` (504).
    fn exceeded(&self, stage: Option<Stage>) -> ApiError {
        let during = match stage {
            Some(Stage::Body) => "; its body was still arriving",
            Some(Stage::Guest) => "; it was stopped while its guest ran",
            Some(Stage::Queue) => "; it was stopped while it waited for the model, before its rows ran",
            Some(Stage::Inference) => "; it was stopped during its forward pass",
            _ => "",
        };
        ApiError::request_timeout(self.limit, self.source.name(), during)
    }
}

/// The client's own deadline from `X-Request-Timeout`: decimal seconds, more than zero.
fn header_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(REQUEST_TIMEOUT) else { return Ok(None) };
    let text = value.to_str().unwrap_or("(not text)").trim();
    seconds(text).map(Some).ok_or_else(|| {
        ApiError::bad_request(format!(
            "header X-Request-Timeout '{text:.32}' is not a number of seconds above zero (e.g. 2 or 0.5)"
        ))
    })
}

/// Seconds written as digits with at most one decimal point, above zero.
fn seconds(text: &str) -> Option<Duration> {
    let well_formed = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit());
    if !well_formed {
        return None;
    }
    let secs: f64 = text.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero())
}

/// The OIP/Triton `timeout` request parameter: whole microseconds; 0 sets none.
pub fn parameter_timeout(value: Option<&super::oip_codec::Parameter>) -> Result<Option<Duration>, ApiError> {
    use super::oip_codec::Parameter;
    match value {
        None | Some(Parameter::Int(0)) => Ok(None),
        Some(Parameter::Int(us)) if *us > 0 => Ok(Some(Duration::from_micros(*us as u64))),
        Some(other) => Err(ApiError::bad_request(format!(
            "parameter 'timeout' must be a whole number of microseconds (0 for none), got {other:?}"
        ))),
    }
}

/// One inference request's stage, held by its handler from its first byte to its answer.
/// Dropped before [`Work::finish`], the request was given up by its client.
pub struct Work {
    progress: Progress,
}

impl Work {
    pub fn start() -> Work {
        Work { progress: Progress::new(Stage::Body) }
    }

    /// The stage the layers below move along.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The request was answered (whatever the answer): dropping it is no cancellation.
    pub fn finish(&self) {
        self.progress.enter(Stage::Done);
    }

    /// Reading the body failed: if it broke off, the client went away.
    pub fn body_failed(&self, e: &ApiError) {
        if e.code == super::error::BODY_INCOMPLETE {
            self.client_left();
        }
    }

    /// The client went away: counted and logged once, by the stage the request had reached.
    pub fn client_left(&self) {
        if let Some(stage) = self.progress.abandon() {
            METRICS.request_cancelled(stage.name());
            tracing::info!(stage = stage.name(), "request cancelled: the client went away");
        }
    }

    /// Runs the rest of a request within `deadline`: past it, the work is given up on (rows
    /// still queued never run), counted by the stage it reached, and answered 504 (in the
    /// error shape `E` of the route's protocol).
    pub async fn within<T, E: From<ApiError>>(
        &self,
        deadline: &Deadline,
        handler: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout_at(deadline.at, handler).await {
            Ok(answer) => answer,
            Err(_) => {
                let stage = self.progress.abandon();
                if let Some(stage) = stage {
                    METRICS.request_deadline_exceeded(stage.name());
                }
                Err(deadline.exceeded(stage).into())
            }
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.client_left();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_timeout_is_decimal_seconds_above_zero() {
        assert_eq!(seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(seconds("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(seconds(".5"), Some(Duration::from_millis(500)));
        for bad in ["", "0", "0.0", "-1", "1e3", "inf", "NaN", "1.2.3", " ", "1 s", "99999999999999999999999"]
        {
            assert_eq!(seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_smaller_deadline_applies_and_says_where_it_came_from() {
        let received = Instant::now();
        let server = Deadline::server(received, Duration::from_secs(30));
        let client = server.tightened(received, Some(Duration::from_secs(2)), Source::Header);
        assert_eq!((client.limit, client.source), (Duration::from_secs(2), Source::Header));
        let looser = server.tightened(received, Some(Duration::from_secs(60)), Source::Parameter);
        assert_eq!((looser.limit, looser.source), (Duration::from_secs(30), Source::Server));
        assert_eq!(server.tightened(received, None, Source::Header).source, Source::Server);
        let message = client.exceeded(Some(Stage::Queue)).message;
        assert!(
            message.contains("2 s (X-Request-Timeout)") && message.contains("before its rows ran"),
            "{message}"
        );
    }
}
