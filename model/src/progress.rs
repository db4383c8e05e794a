//! Where a request is, shared by the request and the inference thread. The request moves it
//! along; giving up on it (its client went away, or its deadline passed) is one atomic step
//! that also says where it was; and the inference thread starts a call's rows only if the call
//! is still wanted at that moment, so no forward pass runs rows that nobody will read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// A request's stage, as cancellation and deadline metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stage {
    /// Its body is arriving.
    Body = 0,
    /// Its guest runs (or waits for a core), before or after the model.
    Guest = 1,
    /// Its rows wait in the model's batch queue.
    Queue = 2,
    /// Its rows are in a forward pass.
    Inference = 3,
    /// It was answered.
    Done = 4,
    /// It was given up on.
    Abandoned = 5,
}

impl Stage {
    fn from_u8(value: u8) -> Stage {
        match value {
            0 => Stage::Body,
            1 => Stage::Guest,
            2 => Stage::Queue,
            3 => Stage::Inference,
            4 => Stage::Done,
            _ => Stage::Abandoned,
        }
    }

    /// The metric label: `body`, `guest`, `queue`, `inference`, `done` or `abandoned`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Body => "body",
            Stage::Guest => "guest",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
            Stage::Done => "done",
            Stage::Abandoned => "abandoned",
        }
    }
}

/// One request's [`Stage`]; clones share it.
#[derive(Debug, Clone)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    pub fn new(stage: Stage) -> Progress {
        Progress(Arc::new(AtomicU8::new(stage as u8)))
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves the request to `stage`, unless it was finished or given up on.
    pub fn enter(&self, stage: Stage) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (Stage::from_u8(now) < Stage::Done).then_some(stage as u8)
        });
    }

    /// Gives up on the request and returns the stage it was in; `None` if it was already
    /// answered or given up on.
    pub fn abandon(&self) -> Option<Stage> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (Stage::from_u8(now) < Stage::Done).then_some(Stage::Abandoned as u8)
            })
            .ok()
            .map(Stage::from_u8)
    }

    /// The inference thread's claim on a queued call as its forward pass starts: false if the
    /// request was given up on (its rows must not run).
    pub(crate) fn start_forward(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (Stage::from_u8(now) < Stage::Done).then_some(Stage::Inference as u8)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_says_where_the_request_was_once_and_stops_the_forward_pass() {
        let progress = Progress::new(Stage::Body);
        progress.enter(Stage::Queue);
        let seen_by_the_thread = progress.clone();
        assert_eq!(progress.abandon(), Some(Stage::Queue));
        assert_eq!(progress.abandon(), None, "given up on once");
        assert!(!seen_by_the_thread.start_forward(), "an abandoned call's rows do not run");
        progress.enter(Stage::Guest);
        assert_eq!(progress.stage(), Stage::Abandoned, "nothing moves an abandoned request on");
    }

    #[test]
    fn an_answered_request_is_not_given_up_on() {
        let progress = Progress::new(Stage::Guest);
        progress.enter(Stage::Queue);
        assert!(progress.start_forward());
        assert_eq!(progress.stage(), Stage::Inference);
        progress.enter(Stage::Done);
        assert_eq!(progress.abandon(), None);
        assert_eq!(progress.stage(), Stage::Done);
    }
}
