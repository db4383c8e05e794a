//! Reading a request body whole, within the limits: `--max-body-bytes`, the upload memory
//! budget (`--max-upload-memory`), `--min-upload-rate` and the request's deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use motion_model::Expected;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, AppState};

impl AppState {
    /// Reads a request's whole body within the limits: `--max-body-bytes` (413), the upload
    /// memory budget (503), `--min-upload-rate` (408, connection closed) and the request's
    /// deadline (408). The budget is taken as bytes arrive, not as declared, so a slow upload
    /// holds only what it has sent, and it is held until the returned [`Upload`] is dropped.
    /// A body refused for its size or the budget is drained first (up to the limit again, for
    /// [`DRAIN_TIMEOUT`]): a refusal sent while the client is still writing reaches many
    /// clients as a reset instead of the answer.
    pub(super) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        deadline: &super::work::Deadline,
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
        // Sized to the declared length where there is room for it, else grown as bytes arrive.
        let declared = declared.map_or(0, |n| n as usize);
        let presized = self.presize(declared);
        let mut data =
            BytesMut::with_capacity(if presized.is_some() { declared } else { declared.min(64 * 1024) });
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        let min_rate = self.settings.min_upload_rate;
        let mut window_end = tokio::time::Instant::now() + UPLOAD_RATE_WINDOW;
        let mut window_start_len = 0usize;
        loop {
            let wake = if min_rate > 0 { window_end.min(deadline.at) } else { deadline.at };
            let frame = match tokio::time::timeout_at(wake, body.frame()).await {
                Ok(frame) => frame,
                Err(_) if tokio::time::Instant::now() >= deadline.at => {
                    return Err(deadline.body_timeout());
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
                Some(Err(e)) => return Err(ApiError::body_incomplete(e)),
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
        Ok(Upload {
            bytes: data.freeze(),
            announced: Expected::default(),
            _reserved: reserved,
            _presized: presized,
        })
    }

    /// Room to size a body of `declared` bytes before it arrives, if the others being read
    /// leave it. Grown as it arrives instead, a large body is copied again each time its
    /// buffer cannot grow in place, which under load is most times: at 16 clients on Y4M the
    /// copies were 6 % of the server's own work (`perf record`), and sized ahead the server
    /// spends 7.14 ms of CPU a request instead of 7.41. The room is address space, not memory
    /// (pages are touched as bytes arrive, and the upload budget counts them then), but it is
    /// bounded all the same, by the budget's size: clients that declare large bodies and send
    /// little reserve no more than that, and bodies beyond it grow as they arrive.
    fn presize(&self, declared: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(declared.div_ceil(1024)).ok()?;
        Arc::clone(&self.presized).try_acquire_many_owned(kib).ok()
    }

    /// Reads a body as [`AppState::read_body`] does, holding `announced`, the request's
    /// announcement of its model call ([`crate::service::Service::announce`]), while it arrives
    /// for at most [`ANNOUNCED_UPLOAD`]: a batch gathered meanwhile waits for a request whose
    /// body is about to be in, but not for a slow upload. The [`Upload`] keeps the announcement
    /// if it is still held.
    pub(super) async fn read_body_announced(
        &self,
        headers: &HeaderMap,
        body: Body,
        deadline: &super::work::Deadline,
        announced: Expected,
    ) -> Result<Upload, ApiError> {
        let reading = self.read_body(headers, body, deadline);
        tokio::pin!(reading);
        match tokio::time::timeout(ANNOUNCED_UPLOAD, &mut reading).await {
            Ok(upload) => Ok(Upload { announced, ..upload? }),
            Err(_) => {
                drop(announced);
                reading.await
            }
        }
    }
}

/// How long a body may take to arrive and still be waited for by a batch: a request announces
/// its model call as its body starts (the clip's upload, then its guest's preprocessing, come
/// before the call), so at many clients the pass that starts as the last one ends takes the
/// requests arriving behind it instead of running nearly alone. An upload still arriving after
/// this gives its announcement up until it is read, so slow clients never hold a batch longer.
pub(super) const ANNOUNCED_UPLOAD: Duration = Duration::from_millis(5);

/// How long a refused upload is drained before the refusal is sent anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The window `--min-upload-rate` is measured over: an upload that sends less than
/// `rate × window` bytes in any one of them is refused with 408.
pub(super) const UPLOAD_RATE_WINDOW: Duration = Duration::from_secs(5);

/// A request body read whole, with its share of the upload memory budget (returned on drop)
/// and the request's announcement of its model call, where it still holds one.
pub(crate) struct Upload {
    pub bytes: Bytes,
    pub announced: Expected,
    _reserved: Option<OwnedSemaphorePermit>,
    /// The room its buffer was sized ahead with, if it was ([`AppState::read_body`]).
    _presized: Option<OwnedSemaphorePermit>,
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
