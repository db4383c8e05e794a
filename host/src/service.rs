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
use motion_model::{BackendError, Input, Model, Output, Progress};
use motion_runtime::{Classified, GuestError, GuestSet, Limits, LoadedGuest, Media, Runtime, SetError};

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

/// The server's one service; `serve` makes it before the sockets open and hands it the
/// runtime once models and guests are loaded.
pub struct Service {
    phase: AtomicU8,
    models_loaded: AtomicBool,
    runtime: OnceLock<Arc<Runtime>>,
}

impl Service {
    pub fn new() -> Arc<Service> {
        Arc::new(Service {
            phase: AtomicU8::new(Phase::Starting as u8),
            models_loaded: AtomicBool::new(false),
            runtime: OnceLock::new(),
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

    /// Runs `guest` on one clip; a trap, timeout or limit hit is counted against the guest.
    /// `progress` is the request's stage.
    pub async fn classify(
        &self,
        guest: &LoadedGuest,
        media: Vec<Media>,
        top_k: u32,
        progress: &Progress,
    ) -> Result<Classified, ServiceError> {
        let result = self.ready()?.classify(guest, media, top_k, progress).await;
        match &result {
            Err(GuestError::Trap { .. }) => METRICS.guest_trapped(&guest.name),
            Err(GuestError::Timeout { .. }) => METRICS.guest_timed_out(&guest.name),
            Err(GuestError::Limit { limit, .. }) => METRICS.guest_hit_limit(&guest.name, limit),
            _ => {}
        }
        Ok(result?)
    }

    /// Runs the raw model on one FP32 input, through the same batcher as the guests' calls.
    pub async fn infer(
        &self,
        model: &Model,
        input: Input,
        progress: &Progress,
    ) -> Result<Output, ServiceError> {
        Ok(model.call(input, progress).await?)
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
        let loaded = match motion_runtime::check_name(name) {
            Ok(()) => runtime.load(name, bytes).await,
            Err(reason) => Err(GuestError::Rejected { name: name.to_string(), reasons: vec![reason] }),
        };
        let guest = match loaded {
            Ok(guest) => guest,
            Err(e) => {
                METRICS.guest_rejected(name);
                let stays =
                    if runtime.guests().get(name).is_some() { "; the running version stays" } else { "" };
                let what = if matches!(origin, Origin::Admin) { "upload" } else { "file" };
                tracing::warn!(guest = %name, source = %origin, error = %e, "guest {what} rejected{stays}");
                return Err(e.into());
            }
        };
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
            "guest loaded and self-tested; {} from {origin}",
            if replaced { "replaced" } else { "installed" }
        );
        Ok(Installed { guest, replaced })
    }

    /// Puts `name` back on its previous version and returns it.
    pub fn rollback(&self, name: &str) -> Result<Arc<LoadedGuest>, ServiceError> {
        let live = self.ready()?.rollback(name)?;
        METRICS.guest_swapped(name);
        Ok(live)
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
