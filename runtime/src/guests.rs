//! The live guests: by name, each with its history, and which one is the default.
//!
//! A [`GuestSet`] is immutable; every change builds a new set that the runtime swaps in
//! atomically, so a request that loaded the old set keeps the version it started with.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::guest::LoadedGuest;

/// Versions kept per guest for rollback, besides the live one.
pub const HISTORY: usize = 8;

/// One guest name: the live version and the ones before it (newest last).
#[derive(Clone)]
struct Slot {
    live: Arc<LoadedGuest>,
    previous: Vec<Arc<LoadedGuest>>,
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

    /// The versions before the live one of `name`, newest first: what rollback returns to.
    pub fn history(&self, name: &str) -> impl Iterator<Item = &Arc<LoadedGuest>> {
        self.slots.get(name).into_iter().flat_map(|slot| slot.previous.iter().rev())
    }

    /// The set with `guest` live under its name (the old version moves to history); the first
    /// guest becomes the default. Also says whether a version was replaced.
    pub fn with_installed(&self, guest: Arc<LoadedGuest>) -> (GuestSet, bool) {
        let mut next = self.clone();
        let name = guest.name.clone();
        let replaced = match next.slots.remove(&name) {
            Some(mut slot) => {
                slot.previous.push(slot.live);
                if slot.previous.len() > HISTORY {
                    slot.previous.remove(0);
                }
                next.slots.insert(name.clone(), Slot { live: guest, previous: slot.previous });
                true
            }
            None => {
                next.slots.insert(name.clone(), Slot { live: guest, previous: Vec::new() });
                false
            }
        };
        next.default.get_or_insert(name);
        (next, replaced)
    }

    /// The set with `name` back on its previous version.
    pub fn with_rollback(&self, name: &str) -> Result<GuestSet, SetError> {
        let mut next = self.clone();
        let slot = next.slots.get_mut(name).ok_or_else(|| SetError::Unknown(name.into()))?;
        let previous = slot.previous.pop().ok_or_else(|| SetError::NoHistory(name.into()))?;
        slot.live = previous;
        Ok(next)
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
