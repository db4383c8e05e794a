//! The live guests: by name, each with its history, its canary if it has one, and which one
//! is the default.
//!
//! A [`GuestSet`] is immutable; every change builds a new set that the runtime swaps in
//! atomically, so a request that loaded the old set keeps the version it started with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::guest::LoadedGuest;

/// Versions kept per guest for rollback, besides the live one.
pub const HISTORY: usize = 8;

/// One guest name: the live version, the ones before it (newest last), and a canary.
#[derive(Clone)]
struct Slot {
    live: Arc<LoadedGuest>,
    previous: Vec<Arc<LoadedGuest>>,
    canary: Option<Canary>,
}

/// A new version taking a share of its name's traffic beside the live one.
#[derive(Clone)]
pub struct Canary {
    pub guest: Arc<LoadedGuest>,
    /// Its share of the name's requests, 1 to 99 percent.
    pub percent: u8,
    /// How it and the live version have done since it started.
    pub trial: Arc<Trial>,
}

/// Which version of a name answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Live,
    Canary,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Canary => "canary",
        }
    }
}

/// Requests and the guest's failures (faults and timeouts) of one version during a trial.
#[derive(Debug, Default)]
pub struct Tally {
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Tally {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failures per request; 0 before any request.
    pub fn failure_rate(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 { 0.0 } else { self.failures() as f64 / requests as f64 }
    }
}

/// Requests are routed in blocks of this many.
const BLOCK: usize = 100;

/// A canary's trial: how requests are routed, and how each version has done since the trial
/// began.
#[derive(Debug)]
pub struct Trial {
    percent: u8,
    block: Mutex<Block>,
    pub live: Tally,
    pub canary: Tally,
}

/// One block of routing decisions: `percent` of them the canary's, at random places.
#[derive(Debug)]
struct Block {
    picks: [bool; BLOCK],
    next: usize,
}

impl Trial {
    pub fn new(percent: u8) -> Trial {
        let block = Block { picks: [false; BLOCK], next: BLOCK };
        Trial { percent, block: Mutex::new(block), live: Tally::default(), canary: Tally::default() }
    }

    /// Whether the next request goes to the canary. Of every 100 routed, exactly `percent`
    /// do, at random places in the block: the share is exact, and no pattern in what clients
    /// send (every other request a different kind, say) can line up with it.
    fn takes_next(&self) -> bool {
        let mut block = self.block.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if block.next == BLOCK {
            block.picks = std::array::from_fn(|i| i < usize::from(self.percent));
            fastrand::shuffle(&mut block.picks);
            block.next = 0;
        }
        let pick = block.picks[block.next];
        block.next += 1;
        pick
    }

    /// Records an answer of `role`'s version; `failed` when the guest is to blame (it
    /// trapped, went past a limit, returned a wrong answer or ran past its deadline).
    pub fn record(&self, role: Role, failed: bool) {
        let tally = match role {
            Role::Live => &self.live,
            Role::Canary => &self.canary,
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            tally.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The version a request runs, and the trial it counts in (none when no canary runs, or when
/// the client pinned a version).
#[derive(Clone)]
pub struct Routed {
    pub guest: Arc<LoadedGuest>,
    pub role: Role,
    pub trial: Option<Arc<Trial>>,
}

/// What a rollback did.
pub enum RolledBack {
    /// Removed the name's canary (this version); the live one stays.
    Canary(Arc<LoadedGuest>),
    /// Made the previous version live again (this one).
    Previous(Arc<LoadedGuest>),
}

/// The live guests by name, and which answers `/v1/classify`.
#[derive(Clone, Default)]
pub struct GuestSet {
    default: Option<String>,
    slots: BTreeMap<String, Slot>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SetError {
    #[error("no guest named '{0}'")]
    Unknown(String),
    #[error("guest '{0}' has no earlier version to roll back to")]
    NoHistory(String),
    #[error("guest '{0}' is the default guest and cannot be removed")]
    IsDefault(String),
    #[error("guest '{0}' has no canary")]
    NoCanary(String),
    #[error("guest '{0}' has no live version for a canary to run beside; install it first")]
    NothingToCanary(String),
    #[error("a canary takes 1 to 99 percent of its guest's traffic, not {0}")]
    Share(u32),
}

impl GuestSet {
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedGuest>> {
        self.slots.get(name).map(|slot| &slot.live)
    }

    pub fn default_guest(&self) -> Option<&Arc<LoadedGuest>> {
        self.default.as_deref().and_then(|name| self.get(name))
    }

    pub fn names(&self) -> Vec<&str> {
        self.slots.keys().map(String::as_str).collect()
    }

    /// The name of the default guest.
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn is_default(&self, name: &str) -> bool {
        self.default.as_deref() == Some(name)
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every live guest, by name.
    pub fn live(&self) -> impl Iterator<Item = (&str, &Arc<LoadedGuest>)> {
        self.slots.iter().map(|(name, slot)| (name.as_str(), &slot.live))
    }

    /// The canary of `name`, if it has one.
    pub fn canary(&self, name: &str) -> Option<&Canary> {
        self.slots.get(name).and_then(|slot| slot.canary.as_ref())
    }

    /// The version of `name` the next request runs: the canary for its share, else the live
    /// one.
    pub fn route(&self, name: &str) -> Option<Routed> {
        let slot = self.slots.get(name)?;
        Some(match &slot.canary {
            Some(c) if c.trial.takes_next() => {
                Routed { guest: Arc::clone(&c.guest), role: Role::Canary, trial: Some(Arc::clone(&c.trial)) }
            }
            Some(c) => {
                Routed { guest: Arc::clone(&slot.live), role: Role::Live, trial: Some(Arc::clone(&c.trial)) }
            }
            None => Routed { guest: Arc::clone(&slot.live), role: Role::Live, trial: None },
        })
    }

    /// The live or canary version of `name` with `digest`, outside any trial.
    pub fn pinned(&self, name: &str, digest: &str) -> Option<Routed> {
        let slot = self.slots.get(name)?;
        let canary = slot.canary.as_ref().map(|c| (&c.guest, Role::Canary));
        [(&slot.live, Role::Live)]
            .into_iter()
            .chain(canary)
            .find(|(g, _)| g.digest == digest)
            .map(|(g, role)| Routed { guest: Arc::clone(g), role, trial: None })
    }

    /// Every digest the set holds (live, canary and history), for what is kept per version.
    pub fn digests(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for (name, slot) in &self.slots {
            let canary = slot.canary.as_ref().map(|c| &c.guest);
            for g in std::iter::once(&slot.live).chain(&slot.previous).chain(canary) {
                out.push((name.as_str(), g.digest.as_str()));
            }
        }
        out
    }

    /// The versions before the live one of `name`, newest first: what rollback returns to.
    pub fn history(&self, name: &str) -> impl Iterator<Item = &Arc<LoadedGuest>> {
        self.slots.get(name).into_iter().flat_map(|slot| slot.previous.iter().rev())
    }

    /// The set with `guest` live under its name (the old version moves to history, and a
    /// canary's trial against it ends); the first guest becomes the default. Also says whether
    /// a version was replaced.
    pub fn with_installed(&self, guest: Arc<LoadedGuest>) -> (GuestSet, bool) {
        let mut next = self.clone();
        let name = guest.name.clone();
        let replaced = match next.slots.remove(&name) {
            Some(mut slot) => {
                slot.previous.push(slot.live);
                if slot.previous.len() > HISTORY {
                    slot.previous.remove(0);
                }
                next.slots.insert(name.clone(), Slot { live: guest, previous: slot.previous, canary: None });
                true
            }
            None => {
                next.slots.insert(name.clone(), Slot { live: guest, previous: Vec::new(), canary: None });
                false
            }
        };
        next.default.get_or_insert(name);
        (next, replaced)
    }

    /// The set with `name`'s canary removed when it has one, else with `name` back on its
    /// previous version.
    pub fn with_rollback(&self, name: &str) -> Result<(GuestSet, RolledBack), SetError> {
        let mut next = self.clone();
        let slot = next.slots.get_mut(name).ok_or_else(|| SetError::Unknown(name.into()))?;
        if let Some(canary) = slot.canary.take() {
            return Ok((next, RolledBack::Canary(canary.guest)));
        }
        let previous = slot.previous.pop().ok_or_else(|| SetError::NoHistory(name.into()))?;
        slot.live = Arc::clone(&previous);
        Ok((next, RolledBack::Previous(previous)))
    }

    /// The set with `guest` as the canary of its name at `percent` (a new trial; a canary
    /// already there is replaced).
    pub fn with_canary(&self, guest: Arc<LoadedGuest>, percent: u8) -> Result<GuestSet, SetError> {
        if !(1..=99).contains(&percent) {
            return Err(SetError::Share(percent.into()));
        }
        let mut next = self.clone();
        let slot =
            next.slots.get_mut(&guest.name).ok_or_else(|| SetError::NothingToCanary(guest.name.clone()))?;
        slot.canary = Some(Canary { guest, percent, trial: Arc::new(Trial::new(percent)) });
        Ok(next)
    }

    /// The set with `name`'s canary live (the live version moves to history), if it has one
    /// (with `digest`, when given); returns it.
    pub fn with_promoted(
        &self,
        name: &str,
        digest: Option<&str>,
    ) -> Result<(GuestSet, Arc<LoadedGuest>), SetError> {
        let canary = self
            .canary(name)
            .filter(|c| digest.is_none_or(|d| c.guest.digest == d))
            .ok_or_else(|| SetError::NoCanary(name.into()))?;
        let guest = Arc::clone(&canary.guest);
        let (next, _) = self.with_installed(Arc::clone(&guest));
        Ok((next, guest))
    }

    /// The set without `name`'s canary, if its canary is still the version `digest`.
    pub fn without_canary(&self, name: &str, digest: &str) -> Result<GuestSet, SetError> {
        match self.canary(name) {
            Some(c) if c.guest.digest == digest => {
                let mut next = self.clone();
                if let Some(slot) = next.slots.get_mut(name) {
                    slot.canary = None;
                }
                Ok(next)
            }
            _ => Err(SetError::NoCanary(name.into())),
        }
    }

    /// The set without `name`, which must not be the default.
    pub fn without(&self, name: &str) -> Result<GuestSet, SetError> {
        if !self.slots.contains_key(name) {
            return Err(SetError::Unknown(name.into()));
        }
        if self.default.as_deref() == Some(name) {
            return Err(SetError::IsDefault(name.into()));
        }
        let mut next = self.clone();
        next.slots.remove(name);
        Ok(next)
    }

    /// The set with `name` as the default guest.
    pub fn with_default(&self, name: &str) -> Result<GuestSet, SetError> {
        if !self.slots.contains_key(name) {
            return Err(SetError::Unknown(name.into()));
        }
        let mut next = self.clone();
        next.default = Some(name.into());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_takes_exactly_its_share_of_every_hundred_at_random_places() {
        for percent in [1u8, 10, 33, 50, 99] {
            let trial = Trial::new(percent);
            let taken: Vec<bool> = (0..1000).map(|_| trial.takes_next()).collect();
            for block in taken.chunks(BLOCK) {
                assert_eq!(block.iter().filter(|t| **t).count(), usize::from(percent), "{percent}%");
            }
        }
        // At 50%, strict alternation would line up with a client that alternates what it
        // sends; ten shuffled blocks are never all alternating (odds of 1 in C(100, 50)^10).
        let trial = Trial::new(50);
        let taken: Vec<bool> = (0..1000).map(|_| trial.takes_next()).collect();
        assert!(taken.windows(2).any(|w| w[0] == w[1]), "the canary's requests alternate strictly");
    }

    #[test]
    fn a_trial_counts_requests_and_the_guests_failures_per_version() {
        let trial = Trial::new(10);
        trial.record(Role::Canary, true);
        trial.record(Role::Canary, false);
        trial.record(Role::Live, false);
        assert_eq!((trial.canary.requests(), trial.canary.failures()), (2, 1));
        assert_eq!(trial.canary.failure_rate(), 0.5);
        assert_eq!((trial.live.requests(), trial.live.failure_rate()), (1, 0.0));
        assert_eq!(Tally::default().failure_rate(), 0.0, "no requests, no rate");
    }
}
