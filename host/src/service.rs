//! The application service: everything a protocol asks of the server, whichever protocol it is
//! (`/v1`, the Open Inference Protocol's `/v2`, the admin API, the guest directory). Classify
//! with a guest, infer on a raw model, list and swap guests, readiness. Routes call this and
//! never the model backend or the guest set's internals; the counting and logging of guest
//! changes and guest failures is written here once.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::metrics::METRICS;
use motion_model::{BackendError, Expected, Input, Model, Output, Progress};
use motion_runtime::{
    Classified, GuestError, GuestSet, Limits, LoadedGuest, Media, Role, RolledBack, Routed, Runtime,
    Segmentation, SetError, Trial,
};

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Healthy = 1,
    Draining = 2,
}

/// Why the service could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Not serving (yet, or any more); the message says which.
    #[error("{0}")]
    NotReady(&'static str),
    #[error("no guest named '{name:.64}' (loaded: {})", loaded.join(", "))]
    UnknownGuest { name: String, loaded: Vec<String> },
    #[error("guest '{name}' has no live or canary version with digest '{digest:.80}' (serving: {})", serving.join(", "))]
    UnknownDigest { name: String, digest: String, serving: Vec<String> },
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Model(#[from] BackendError),
    #[error(transparent)]
    Set(#[from] SetError),
}

/// Which guest a classification asks for.
#[derive(Debug, Clone, Copy)]
pub enum GuestChoice<'a> {
    Default,
    Named(&'a str),
}

/// Where a guest being installed came from, for its log line.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// `--guest` at start.
    Flag(&'a Path),
    /// A file in `--guest-dir`.
    Dir(&'a Path),
    /// `PUT /admin/guests/{name}`.
    Admin,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(path) => write!(f, "--guest {}", path.display()),
            Origin::Dir(path) => write!(f, "--guest-dir {}", path.display()),
            Origin::Admin => f.write_str("the admin API"),
        }
    }
}

/// A guest made live.
pub struct Installed {
    pub guest: Arc<LoadedGuest>,
    /// Whether it replaced a live version of its name.
    pub replaced: bool,
}

/// When a canary leaves or stays by itself (`--canary-min-requests`,
/// `--canary-max-fault-rate`, `--canary-auto-promote-after`).
#[derive(Debug, Clone, Copy)]
pub struct CanaryPolicy {
    /// Canary requests before its failure rate is judged.
    pub min_requests: u64,
    /// How far the canary's failure rate may exceed the live version's before it is removed.
    pub max_failure_rate: f64,
    /// Canary requests after which a canary still within the rate is made live (at least
    /// `min_requests`); `None` leaves promotion to an operator.
    pub auto_promote_after: Option<u64>,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy { min_requests: 50, max_failure_rate: 0.05, auto_promote_after: None }
    }
}

/// The server's one service; `serve` makes it before the sockets open and hands it the
/// runtime once models and guests are loaded.
pub struct Service {
    phase: AtomicU8,
    models_loaded: AtomicBool,
    runtime: OnceLock<Arc<Runtime>>,
    canary: CanaryPolicy,
}

impl Service {
    pub fn new(canary: CanaryPolicy) -> Arc<Service> {
        Arc::new(Service {
            phase: AtomicU8::new(Phase::Starting as u8),
            models_loaded: AtomicBool::new(false),
            runtime: OnceLock::new(),
            canary,
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
        self.models_loaded.store(true, Ordering::SeqCst);
    }

    pub fn models_loaded(&self) -> bool {
        self.models_loaded.load(Ordering::SeqCst)
    }

    /// The runtime the service runs on, once it is made; guests can be installed from now on,
    /// requests are served once [`Service::set_ready`] is called.
    pub fn attach(&self, runtime: Arc<Runtime>) {
        let _ = self.runtime.set(runtime);
    }

    /// Reports healthy: requests are served from now on.
    pub fn set_ready(&self) {
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

    /// The live guests, once the runtime is attached, whatever the phase (for health and the
    /// guest directory).
    pub fn live_guests(&self) -> Option<Arc<GuestSet>> {
        self.runtime.get().map(|runtime| runtime.guests())
    }

    /// The live guests and the models, once loaded, whatever the phase (for metrics and the
    /// OpenAPI document).
    pub fn loaded(&self) -> Option<(Arc<GuestSet>, Vec<Arc<Model>>)> {
        let runtime = self.runtime.get()?;
        Some((runtime.guests(), runtime.models().iter().cloned().collect()))
    }

    /// The runtime, while requests are served. While draining, readiness is off but requests
    /// that still arrive are served: the platform needs the grace period to stop routing here.
    fn ready(&self) -> Result<&Runtime, ServiceError> {
        match (self.phase(), self.runtime.get()) {
            (Phase::Healthy | Phase::Draining, Some(runtime)) => Ok(runtime),
            (Phase::Draining, None) => Err(ServiceError::NotReady("the server is shutting down")),
            _ => Err(ServiceError::NotReady("the server is starting: the model and guests are loading")),
        }
    }

    /// The live guests, as of now.
    pub fn guests(&self) -> Result<Arc<GuestSet>, ServiceError> {
        Ok(self.ready()?.guests())
    }

    /// The per-request limits every guest runs under.
    pub fn limits(&self) -> Result<&Limits, ServiceError> {
        Ok(self.ready()?.limits())
    }

    /// The models served raw, by name.
    pub fn models(&self) -> Result<Vec<Arc<Model>>, ServiceError> {
        Ok(self.ready()?.models().iter().cloned().collect())
    }

    /// The raw model `name`, if one is served.
    pub fn model(&self, name: &str) -> Result<Option<Arc<Model>>, ServiceError> {
        Ok(self.ready()?.models().get(name).cloned())
    }

    /// The live guest a request asks for.
    pub fn guest(&self, choice: GuestChoice) -> Result<Arc<LoadedGuest>, ServiceError> {
        let set = self.guests()?;
        let found = match choice {
            GuestChoice::Default => {
                set.default_guest().ok_or(ServiceError::NotReady("no default guest is loaded"))
            }
            GuestChoice::Named(name) => set.get(name).ok_or_else(|| ServiceError::UnknownGuest {
                name: name.to_string(),
                loaded: set.names().into_iter().map(str::to_string).collect(),
            }),
        };
        found.map(Arc::clone)
    }

    /// The version a request runs: the live version of the guest it asks for, or that
    /// guest's canary for the canary's share of requests. `pin` (a digest) picks the live or
    /// canary version with that digest instead, outside the canary's trial.
    pub fn route(&self, choice: GuestChoice, pin: Option<&str>) -> Result<Routed, ServiceError> {
        let set = self.guests()?;
        let name = match choice {
            GuestChoice::Default => {
                set.default_name().ok_or(ServiceError::NotReady("no default guest is loaded"))?
            }
            GuestChoice::Named(name) => name,
        };
        let unknown = || ServiceError::UnknownGuest {
            name: name.to_string(),
            loaded: set.names().into_iter().map(str::to_string).collect(),
        };
        let Some(digest) = pin else { return set.route(name).ok_or_else(unknown) };
        let live = set.get(name).ok_or_else(unknown)?;
        set.pinned(name, digest).ok_or_else(|| {
            let canary = set.canary(name).map(|c| c.guest.digest.clone());
            ServiceError::UnknownDigest {
                name: name.to_string(),
                digest: digest.to_string(),
                serving: std::iter::once(live.digest.clone()).chain(canary).collect(),
            }
        })
    }

    /// Announces a call to the model of the guest a request asks for (its live version's),
    /// before the request is read and routed: a batch being gathered waits for it. Nothing is
    /// announced for a guest that is not there; routing says why.
    pub fn announce(&self, choice: GuestChoice) -> Expected {
        self.guest(choice).map_or_else(|_| Expected::default(), |guest| guest.model.expect_call())
    }

    /// Runs the routed version on one clip; a trap, timeout or limit hit is counted against
    /// the guest, and the answer counts in its canary's trial, which may end it. `progress` is
    /// the request's stage; `announced`, its call announced by [`Service::announce`], if it was.
    pub async fn classify(
        &self,
        routed: &Routed,
        media: Vec<Media>,
        top_k: u32,
        segments: Option<Segmentation>,
        progress: &Progress,
        announced: Expected,
    ) -> Result<Classified, ServiceError> {
        let guest = &routed.guest;
        let result = self.ready()?.classify(guest, media, top_k, segments, progress, announced).await;
        match &result {
            Err(GuestError::Trap { .. }) => METRICS.guest_trapped(&guest.name),
            Err(GuestError::Timeout { .. }) => METRICS.guest_timed_out(&guest.name),
            Err(GuestError::Limit { limit, .. }) => METRICS.guest_hit_limit(&guest.name, limit),
            _ => {}
        }
        if let Some(trial) = &routed.trial
            && !matches!(result, Err(GuestError::Busy(_)))
        {
            trial.record(routed.role, result.as_ref().is_err_and(GuestError::blames_guest));
            if routed.role == Role::Canary {
                self.judge(guest, trial);
            }
        }
        Ok(result?)
    }

    /// Ends a canary's trial when it has run long enough: removed if its failure rate exceeds
    /// the live version's by more than the policy allows, else made live once
    /// `auto_promote_after` (if set) canary requests have passed.
    fn judge(&self, canary: &LoadedGuest, trial: &Trial) {
        let Ok(runtime) = self.ready() else { return };
        let policy = &self.canary;
        let (tried, live) = (&trial.canary, &trial.live);
        if tried.requests() < policy.min_requests {
            return;
        }
        let (canary_rate, live_rate) = (tried.failure_rate(), live.failure_rate());
        if canary_rate - live_rate > policy.max_failure_rate {
            // Only the request that removes it reports it.
            if runtime.drop_canary(&canary.name, &canary.digest).is_ok() {
                METRICS.canary_ended(&canary.name, "rolled_back", true);
                tracing::warn!(
                    target: "audit",
                    action = "canary-rollback",
                    guest = %canary.name,
                    digest = %canary.digest,
                    client = "-",
                    canary_requests = tried.requests(),
                    canary_failures = tried.failures(),
                    canary_failure_rate = canary_rate,
                    live_requests = live.requests(),
                    live_failures = live.failures(),
                    live_failure_rate = live_rate,
                    max_difference = policy.max_failure_rate,
                    outcome = "rolled back",
                    "canary {} of guest {} rolled back automatically: failure rate {canary_rate:.4} against the live \
                     version's {live_rate:.4} (--canary-max-fault-rate {})",
                    canary.digest,
                    canary.name,
                    policy.max_failure_rate
                );
            }
        } else if policy.auto_promote_after.is_some_and(|n| tried.requests() >= n)
            && let Ok(promoted) = runtime.promote(&canary.name, Some(&canary.digest))
        {
            METRICS.guest_swapped(&canary.name);
            METRICS.canary_ended(&canary.name, "promoted", true);
            tracing::info!(
                target: "audit",
                action = "canary-promote",
                guest = %promoted.name,
                digest = %promoted.digest,
                client = "-",
                canary_requests = tried.requests(),
                canary_failure_rate = canary_rate,
                live_failure_rate = live_rate,
                outcome = "promoted",
                "canary {} of guest {} promoted automatically after {} requests (--canary-auto-promote-after)",
                promoted.digest,
                promoted.name,
                tried.requests()
            );
        }
    }

    /// Runs the raw model on one FP32 input, through the same batcher as the guests' calls;
    /// `announced` is the request's call announced while its body arrived, if it was.
    pub async fn infer(
        &self,
        model: &Model,
        input: Input,
        progress: &Progress,
        announced: Expected,
    ) -> Result<Output, ServiceError> {
        Ok(model.infer(input, &mut model.take_announced(announced), progress).await?)
    }

    /// Validates `bytes` as guest `name` and runs it beside the live version as its canary,
    /// on `percent` of the name's traffic (replacing a canary already there).
    pub async fn install_canary(
        &self,
        name: &str,
        bytes: Vec<u8>,
        percent: u8,
    ) -> Result<Arc<LoadedGuest>, ServiceError> {
        let runtime = self.ready()?;
        // Checked before the upload is compiled: there must be a live version to compare with.
        if !(1..=99).contains(&percent) {
            return Err(SetError::Share(percent.into()).into());
        }
        if runtime.guests().get(name).is_none() {
            return Err(SetError::NothingToCanary(name.to_string()).into());
        }
        let guest = self.validate(runtime, name, bytes, Origin::Admin).await?;
        runtime.install_canary(Arc::clone(&guest), percent)?;
        tracing::info!(
            guest = %guest.name,
            version = %guest.info.version,
            digest = %guest.digest,
            percent,
            "guest loaded and validated; canary on {percent}% of its traffic"
        );
        Ok(guest)
    }

    /// Makes `name`'s canary live.
    pub fn promote(&self, name: &str) -> Result<Arc<LoadedGuest>, ServiceError> {
        let live = self.ready()?.promote(name, None)?;
        METRICS.guest_swapped(name);
        METRICS.canary_ended(name, "promoted", false);
        Ok(live)
    }

    /// Validates `bytes` as guest `name`; a rejection is logged and counted.
    async fn validate(
        &self,
        runtime: &Runtime,
        name: &str,
        bytes: Vec<u8>,
        origin: Origin<'_>,
    ) -> Result<Arc<LoadedGuest>, ServiceError> {
        let loaded = match motion_runtime::check_name(name) {
            Ok(()) => runtime.load(name, bytes).await,
            Err(reason) => Err(GuestError::Rejected { name: name.to_string(), reasons: vec![reason] }),
        };
        loaded.map_err(|e| {
            METRICS.guest_rejected(name);
            let stays = if runtime.guests().get(name).is_some() { "; the running version stays" } else { "" };
            let what = if matches!(origin, Origin::Admin) { "upload" } else { "file" };
            tracing::warn!(guest = %name, source = %origin, error = %e, "guest {what} rejected{stays}");
            e.into()
        })
    }

    /// Validates `bytes` as guest `name` and makes it live; every outcome is logged and
    /// counted once, here.
    pub async fn install(
        &self,
        name: &str,
        bytes: Vec<u8>,
        origin: Origin<'_>,
    ) -> Result<Installed, ServiceError> {
        // The admin API waits for the server to be ready; start-up and the guest directory do not.
        let runtime =
            if matches!(origin, Origin::Admin) { self.ready()? } else { self.runtime_for_install()? };
        let started = Instant::now();
        let guest = self.validate(runtime, name, bytes, origin).await?;
        let replaced = runtime.install(Arc::clone(&guest));
        METRICS.guest_swapped(name);
        tracing::info!(
            guest = %guest.name,
            version = %guest.info.version,
            digest = %guest.digest,
            size = guest.size,
            model = %guest.info.model,
            code = guest.compiled.as_str(),
            source = %origin,
            elapsed_ms = started.elapsed().as_millis() as u64,
            samples = %samples_line(&guest),
            "guest loaded and validated; {} from {origin}",
            if replaced { "replaced" } else { "installed" }
        );
        Ok(Installed { guest, replaced })
    }

    /// Removes `name`'s canary if it has one, else puts `name` back on its previous version.
    pub fn rollback(&self, name: &str) -> Result<RolledBack, ServiceError> {
        let done = self.ready()?.rollback(name)?;
        match &done {
            RolledBack::Canary(_) => METRICS.canary_ended(name, "rolled_back", false),
            RolledBack::Previous(_) => METRICS.guest_swapped(name),
        }
        Ok(done)
    }

    /// Removes the non-default guest `name`; returns the version that was live.
    pub fn remove(&self, name: &str) -> Result<Arc<LoadedGuest>, ServiceError> {
        Ok(self.ready()?.remove(name)?)
    }

    /// Makes `name` the default guest.
    pub fn set_default(&self, name: &str) -> Result<(), ServiceError> {
        Ok(self.runtime_for_install()?.set_default(name)?)
    }

    /// The runtime for changing guests: also while starting, once attached (the start-up
    /// guests are installed before the server reports healthy).
    fn runtime_for_install(&self) -> Result<&Runtime, ServiceError> {
        self.runtime
            .get()
            .map(|r| &**r)
            .ok_or(ServiceError::NotReady("the server is starting: the model and guests are loading"))
    }
}

/// The samples validation sent through a guest, for its log line: "image/png 158 ms, …".
fn samples_line(guest: &LoadedGuest) -> String {
    let runs = guest.samples.iter().map(|run| format!("{} {} ms", run.media_type, run.took.as_millis()));
    let unsampled = guest.unsampled.iter().map(|t| format!("{t} not sampled"));
    runs.chain(unsampled).collect::<Vec<_>>().join(", ")
}
