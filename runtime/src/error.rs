//! How a guest's call can fail, as values: [`GuestError`] for the embedder, and why a trapped
//! call stopped ([`Stop`]), found from the error's type and the store's own records (the
//! limiter's refusals, the deadline) rather than from its message.

use std::time::Duration;

use wasmtime::Store;

use crate::fuel::FuelRefusal;
use crate::limits::{DeadlineExceeded, Limits};
use crate::store::State;
use motion_nn::{CapExceeded, ModelBusy};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot read guest '{path}': {reason}")]
    Read { path: String, reason: String },
    #[error("guest '{name}' rejected: {}", reasons.join("; "))]
    Rejected { name: String, reasons: Vec<String> },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Unsupported(String),
    /// The request's parameters do not suit the guest or the media (a timeline asked of a
    /// 0.1.0 guest, of untimed frames by seconds, or past the cap on windows).
    #[error("{0}")]
    BadRequest(String),
    #[error("guest '{guest}' could not run the model: {message}")]
    Inference { guest: String, message: String },
    #[error("guest '{guest}' trapped: {message}")]
    Trap { guest: String, message: String },
    #[error("guest '{guest}' ran past its deadline of {} ms (--guest-deadline)", limit.as_millis())]
    Timeout { guest: String, limit: Duration },
    #[error("guest '{guest}' returned an invalid result: {message}")]
    InvalidOutput { guest: String, message: String },
    #[error("guest '{guest}' exceeded a limit: {message}")]
    Limit { guest: String, limit: &'static str, message: String },
    #[error("the model is busy: {0}; retry shortly")]
    Busy(String),
}

impl GuestError {
    /// Whether the guest is to blame: it trapped, went past a limit or its deadline, could not
    /// run the model, or answered wrongly (what a canary's trial counts against it).
    pub fn blames_guest(&self) -> bool {
        matches!(
            self,
            GuestError::Inference { .. }
                | GuestError::Trap { .. }
                | GuestError::Timeout { .. }
                | GuestError::InvalidOutput { .. }
                | GuestError::Limit { .. }
        )
    }
}

/// Why a guest's call stopped with an error instead of an answer.
pub(crate) enum Stop {
    Timeout,
    /// It went past one of its [`Limits`]: the limit's short name (a metrics label) and a
    /// message naming the limit and its flag.
    Limit {
        limit: &'static str,
        message: String,
    },
    /// Its model call found the model's queue full.
    Busy(String),
    /// Anything else: a trap code, or an error wasmtime raised.
    Trap(String),
}

impl Stop {
    /// Why `error`, which ended a call in `store`, stopped the guest.
    pub(crate) fn of(
        store: &Store<State>,
        error: &wasmtime::Error,
        limits: &Limits,
        fuel: &FuelRefusal,
    ) -> Stop {
        if error.downcast_ref::<DeadlineExceeded>().is_some() {
            return Stop::Timeout;
        }
        if let Some(busy) = error.downcast_ref::<ModelBusy>() {
            return Stop::Busy(busy.0.clone());
        }
        if let Some((limit, message)) = limit_hit(store, error, limits, fuel) {
            return Stop::Limit { limit, message };
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => Stop::Trap(trap.to_string()),
            None => Stop::Trap(format!("{error}")),
        }
    }

    /// A sentence for a validation report.
    pub(crate) fn describe(&self, limits: &Limits) -> String {
        match self {
            Stop::Timeout => {
                format!("it ran past its deadline of {} ms (--guest-deadline)", limits.deadline.as_millis())
            }
            Stop::Limit { message, .. } => format!("it exceeded a limit: {message}"),
            Stop::Busy(message) | Stop::Trap(message) => message.clone(),
        }
    }
}

/// Names the limit that stopped a guest, if one did: its short name and a message.
fn limit_hit(
    store: &Store<State>,
    error: &wasmtime::Error,
    limits: &Limits,
    fuel: &FuelRefusal,
) -> Option<(&'static str, String)> {
    let limiter = store.data().limiter();
    if let Some(asked) = limiter.memory_refused {
        return Some((
            "memory",
            format!(
                "its memory limit is {} MiB and it asked for {} MiB (--guest-memory-bytes)",
                limits.memory_bytes >> 20,
                asked.div_ceil(1 << 20)
            ),
        ));
    }
    if let Some(asked) = limiter.table_refused {
        return Some((
            "table_elements",
            format!(
                "its table limit is {} elements and it asked for {asked} (--guest-max-table-elements)",
                limits.table_elements
            ),
        ));
    }
    if let Some(cap) = error.downcast_ref::<CapExceeded>() {
        return Some((cap.cap, cap.message.clone()));
    }
    if fuel.matches(error) {
        return Some((
            "transfer",
            format!(
                "it passed more than {} bytes to the host in one call (--guest-max-transfer-bytes)",
                limits.transfer_bytes
            ),
        ));
    }
    None
}
