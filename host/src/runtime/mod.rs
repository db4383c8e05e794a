//! The guest runtime: one wasmtime [`Engine`] and [`Linker`] for the process, an
//! [`InstancePre`](wasmtime::component::InstancePre) per guest version compiled once off the
//! request path, and a fresh [`Store`] per request with its own memory cap and deadline.
//! Instances come from wasmtime's pooling allocator: memory, tables and stacks are reserved
//! once for as many guests as may run at once, and a guest's memory image is mapped
//! copy-on-write, so instantiating one per request costs microseconds.
//!
//! A guest gets an empty WASI context (no files, environment, arguments or sockets; clocks and
//! random numbers stay, as std needs them; stdout and stderr are captured into the host log)
//! and the host's `wasi:nn`. A guest that traps or overruns its deadline fails its own request
//! and nothing else.
//!
//! The live guests sit behind an atomic pointer ([`ArcSwap`]): a request holds the `Arc` of the
//! version it started with, so replacing a guest never blocks or drops one.

pub mod bindings;
mod cache;
mod guests;
pub mod media;
mod output;
mod sample;

pub use cache::{CompileCache, Compiled};
pub use guests::{GuestSet, SetError};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::metrics::METRICS;
use crate::nn::NnActivity;
use bindings::motion::guest::types as wit;
use bindings::{MotionGuest, MotionGuestPre};
use motion_model::ModelRegistry;
use motion_model::{Expected, Model};
use output::GuestOutput;

/// How often the epoch ticks: the granularity of deadlines and of yielding to the scheduler.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most bytes of a guest's stdout and stderr kept per request.
const GUEST_OUTPUT_BYTES: usize = 16 * 1024;

/// Entries of the host's resource table one request may hold at once (WASI streams and
/// pollables, wasi:nn graphs, contexts, tensors and errors).
const MAX_HOST_RESOURCES: usize = 1024;
/// Handles of its own resources a guest may hold at once.
const MAX_GUEST_HANDLES: usize = 10_000;
/// Linear memories one guest may have (a Rust or C guest has one).
const MAX_GUEST_MEMORIES: u32 = 2;
/// Guest instances alive at once beyond the requests in flight: validations and self-tests.
const SPARE_INSTANCES: u32 = 16;

/// Per-request limits on a guest; each names the flag that sets it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory (`--guest-memory-bytes`).
    pub memory_bytes: usize,
    /// Wasm instances, tables and table elements (`--guest-max-instances`,
    /// `--guest-max-tables`, `--guest-max-table-elements`).
    pub instances: usize,
    pub tables: usize,
    pub table_elements: usize,
    /// Wall time from instantiation to the answer (`--guest-deadline`).
    pub deadline: Duration,
    /// Bytes the guest may pass to the host in one call, its result included
    /// (`--guest-max-transfer-bytes`).
    pub transfer_bytes: usize,
    /// Bytes of the result it returns (`--guest-max-result-bytes`).
    pub result_bytes: usize,
    /// wasi:nn calls per request (`--guest-max-nn-calls`).
    pub nn_calls: u32,
    /// Tensor bytes handed to wasi:nn per request (`--guest-max-nn-bytes`).
    pub nn_bytes: usize,
}

impl Limits {
    /// The limits a server runs with when no flag changes them.
    pub fn defaults() -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            instances: 32,
            tables: 32,
            table_elements: 100_000,
            deadline: Duration::from_secs(10),
            transfer_bytes: 32 << 20,
            result_bytes: 64 << 10,
            nn_calls: 100,
            nn_bytes: 64 << 20,
        }
    }
}

/// A guest's description of itself (its `info()` export).
#[derive(Debug, Clone, Serialize)]
pub struct GuestInfo {
    pub name: String,
    pub version: String,
    pub model: String,
    pub input_shape: Vec<i64>,
    pub labels: Vec<String>,
    pub accepts: Vec<String>,
}

impl From<wit::GuestInfo> for GuestInfo {
    fn from(i: wit::GuestInfo) -> Self {
        GuestInfo {
            name: i.name,
            version: i.version,
            model: i.model,
            input_shape: i.input_shape,
            labels: i.labels,
            accepts: i.accepts,
        }
    }
}

/// One compiled, validated guest version.
pub struct LoadedGuest {
    /// The name it is installed under.
    pub name: String,
    pub info: GuestInfo,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: usize,
    pub model: Arc<Model>,
    pub loaded_at: SystemTime,
    /// How long validation took: compiling, linking, `info()` and the self-test.
    pub validation: Duration,
    /// Whether the code was compiled now or loaded from the compiled-guest cache.
    pub compiled: Compiled,
    pre: MotionGuestPre<State>,
}

impl LoadedGuest {
    /// Whether the guest says it reads this media type (parameters ignored).
    pub fn accepts(&self, content_type: &str) -> bool {
        let essence = motion_request::essence(content_type);
        self.info.accepts.iter().any(|a| a.eq_ignore_ascii_case(&essence))
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A guest's digest as the API reports it: `sha256:<hex>` of the component bytes.
pub fn guest_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Checks a guest name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.' or '-' (a name beginning with '-' reads as a flag on command lines).
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "guest name '{name:.80}' must be 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        ))
    }
}

/// The guest name a file gives: its stem, when that is a valid name.
pub fn name_from_file(path: &Path) -> Result<String, String> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    check_name(stem).map(|()| stem.to_string())
}

/// One piece of uploaded media, as the guest receives it.
pub struct Media {
    pub content_type: String,
    pub data: Vec<u8>,
}

/// A guest's answer, checked.
#[derive(Debug, Clone)]
pub struct Classified {
    pub label: String,
    pub score: f32,
    pub top_k: Vec<(String, f32)>,
    pub frames_total: u32,
    pub frames_used: u32,
    pub timings: StageTimings,
    /// Rows in the largest forward pass its `compute` calls ran in (other requests' included).
    pub batch_size: usize,
}

/// Where one request's guest time went, split at its wasi:nn `compute` calls.
#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    /// Making the store and instantiating the guest: the first part of `preprocess`.
    pub instantiate: Duration,
    pub preprocess: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

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
    #[error("guest '{guest}' could not run the model: {message}")]
    Inference { guest: String, message: String },
    #[error("guest '{guest}' trapped: {message}")]
    Trap { guest: String, message: String },
    #[error("guest '{guest}' ran past its deadline of {} ms", limit.as_millis())]
    Timeout { guest: String, limit: Duration },
    #[error("guest '{guest}' returned an invalid result: {message}")]
    InvalidOutput { guest: String, message: String },
    #[error("guest '{guest}' exceeded a limit: {message}")]
    Limit { guest: String, limit: &'static str, message: String },
    #[error("the model is busy: {0}; retry shortly")]
    Busy(String),
}

/// A host call refused because the guest went past one of its [`Limits`]; it traps the guest.
/// The first field is the limit's short name (a metrics label), the second a message naming
/// the limit and its flag.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
pub struct LimitExceeded(pub &'static str, pub String);

/// The epoch callback's verdict when a request's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// The data of one request's [`Store`].
pub struct State {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) models: Arc<ModelRegistry>,
    pub(crate) nn: NnActivity,
    pub(crate) nn_calls: u32,
    pub(crate) nn_bytes: usize,
    /// This request's announced model call, settled when the inference thread takes it.
    pub(crate) expected: Expected,
    limiter: Limiter,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

// Our world's `types` interface has no functions; its (empty) host trait is still required.
impl bindings::motion::guest::types::Host for State {}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps a guest's memory and tables, remembering a refusal so the error can name the limit.
struct Limiter {
    memory_bytes: usize,
    instances: usize,
    tables: usize,
    table_elements: usize,
    memory_refused: Option<usize>,
    table_refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.table_refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        8
    }
}

/// The process's wasm engine, linker and live guests.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    models: Arc<ModelRegistry>,
    limits: Limits,
    guests: ArcSwap<GuestSet>,
    cache: Option<CompileCache>,
    /// Serialises changes to the guest set; readers never take it.
    writer: Mutex<()>,
    ticking: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// The instance pool: room for `concurrency` requests' guests plus validations, each within
/// the per-request limits (the limiter enforces the same numbers per store, with clearer
/// errors; the pool only sizes its reservations by them). Reserving is virtual: a slot's pages
/// are only resident while a guest uses them.
fn pooling(limits: &Limits, concurrency: u32) -> PoolingAllocationConfig {
    let guests = concurrency.saturating_add(SPARE_INSTANCES);
    let instances = u32::try_from(limits.instances).unwrap_or(u32::MAX);
    let tables = u32::try_from(limits.tables).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(guests)
        .total_core_instances(guests.saturating_mul(instances))
        .max_core_instances_per_component(instances)
        .total_memories(guests.saturating_mul(MAX_GUEST_MEMORIES))
        .max_memories_per_component(MAX_GUEST_MEMORIES)
        .max_memories_per_module(MAX_GUEST_MEMORIES)
        .max_memory_size(limits.memory_bytes)
        .total_tables(guests.saturating_mul(tables))
        .max_tables_per_component(tables)
        .max_tables_per_module(tables)
        .table_elements(limits.table_elements)
        .total_stacks(guests)
        // Keep a little of each stack and table resident between guests rather than handing
        // it back to the kernel and faulting it in again (measured: ~10 µs an instantiation).
        .async_stack_keep_resident(128 << 10)
        .table_keep_resident(1 << 20);
    pool
}

impl Runtime {
    /// A runtime serving `models` to at most `concurrency` requests at once; `cache_dir` keeps
    /// compiled guests across restarts.
    pub fn new(
        models: Arc<ModelRegistry>,
        limits: Limits,
        concurrency: u32,
        cache_dir: Option<PathBuf>,
    ) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(&limits, concurrency)));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        MotionGuest::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |state| state)?;

        // Deadlines are counted in epoch ticks; a thread advances the epoch while the runtime lives.
        let ticking = Arc::new(AtomicBool::new(true));
        let (weak_engine, flag) = (engine.weak(), Arc::clone(&ticking));
        std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            while flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak_engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;

        let cache = cache_dir.map(|dir| CompileCache::new(dir, &engine));
        Ok(Runtime {
            engine,
            linker,
            models,
            limits,
            guests: ArcSwap::from_pointee(GuestSet::default()),
            cache,
            writer: Mutex::new(()),
            ticking,
        })
    }

    /// The live guests, as of now.
    pub fn guests(&self) -> Arc<GuestSet> {
        self.guests.load_full()
    }

    pub fn models(&self) -> &ModelRegistry {
        &self.models
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Applies a change to the guest set and swaps the result in; requests in flight keep the
    /// set (and guest versions) they started with.
    fn change<T>(
        &self,
        change: impl FnOnce(&GuestSet) -> Result<(GuestSet, T), SetError>,
    ) -> Result<T, SetError> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (next, out) = change(&self.guests.load())?;
        self.guests.store(Arc::new(next));
        Ok(out)
    }

    /// Makes `guest` live under its name; returns whether it replaced a version. The first
    /// guest installed becomes the default.
    pub fn install(&self, guest: Arc<LoadedGuest>) -> bool {
        let name = guest.name.clone();
        let replaced = self.change(|set| Ok(set.with_installed(guest))).unwrap_or(false);
        METRICS.guest_swapped(&name);
        replaced
    }

    /// Puts `name` back on its previous version and returns it.
    pub fn rollback(&self, name: &str) -> Result<Arc<LoadedGuest>, SetError> {
        let live = self.change(|set| {
            let next = set.with_rollback(name)?;
            let live = Arc::clone(next.get(name).ok_or_else(|| SetError::Unknown(name.into()))?);
            Ok((next, live))
        })?;
        METRICS.guest_swapped(name);
        Ok(live)
    }

    /// Removes the non-default guest `name`.
    pub fn remove(&self, name: &str) -> Result<(), SetError> {
        self.change(|set| Ok((set.without(name)?, ())))
    }

    /// Makes `name` the default guest.
    pub fn set_default(&self, name: &str) -> Result<(), SetError> {
        self.change(|set| Ok((set.with_default(name)?, ())))
    }

    /// Reads, compiles and validates the component at `path` under `name`; nothing goes live.
    pub async fn load_file(&self, name: &str, path: &Path) -> Result<Arc<LoadedGuest>, GuestError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| GuestError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        self.load(name, bytes).await
    }

    /// Compiles a component (on a blocking thread, off the request path), links it against our
    /// world, and checks its `info()` against the model it names. Every failure is a reason.
    pub async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<LoadedGuest>, GuestError> {
        let loaded = self.validate(name, bytes).await;
        if loaded.is_err() {
            METRICS.guest_rejected(name);
        }
        loaded
    }

    async fn validate(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<LoadedGuest>, GuestError> {
        let started = Instant::now();
        let rejected = |reasons: Vec<String>| GuestError::Rejected { name: name.to_string(), reasons };
        let digest_hex = sha256_hex(&bytes);
        let digest = format!("sha256:{digest_hex}");
        let size = bytes.len();
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        let (component, compiled) =
            tokio::task::spawn_blocking(move || cache::compile(&engine, cache.as_ref(), &digest_hex, &bytes))
                .await
                .map_err(|e| rejected(vec![format!("compilation did not finish: {e}")]))?
                .map_err(|e| rejected(vec![format!("does not compile as a wasm component: {e:#}")]))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| rejected(vec![format!("does not fit the motion-guest world: {e:#}")]))?;
        let pre = MotionGuestPre::new(pre)
            .map_err(|e| rejected(vec![format!("does not export motion:guest/classifier: {e:#}")]))?;

        let mut store = self.new_store(Instant::now() + self.limits.deadline);
        let info = async {
            let guest = pre.instantiate_async(&mut store).await?;
            guest.motion_guest_classifier().call_info(&mut store).await
        }
        .await
        .map_err(|e| rejected(vec![format!("info() failed: {}", self.describe_trap(&store, &e))]))?;
        let info = GuestInfo::from(info);
        let model = self.check_info(&info).map_err(rejected)?;
        let mut guest = LoadedGuest {
            name: name.to_string(),
            info,
            digest,
            size,
            model,
            loaded_at: SystemTime::now(),
            validation: Duration::ZERO,
            compiled,
            pre,
        };
        self.self_test(&guest).await.map_err(|reason| rejected(vec![reason]))?;
        guest.validation = started.elapsed();
        Ok(Arc::new(guest))
    }

    /// Classifies a built-in sample frame with the guest, within its deadline, and checks that
    /// the scores over all labels form a distribution: the whole path works (and is warm)
    /// before the guest goes live.
    async fn self_test(&self, guest: &LoadedGuest) -> Result<(), String> {
        if !guest.accepts("image/png") {
            return Err("the self-test sends an image/png frame, which info().accepts does not list".into());
        }
        let media = vec![Media { content_type: "image/png".into(), data: sample::png() }];
        let labels = guest.info.labels.len() as u32;
        let answer = self.run(guest, media, labels).await.map_err(|e| format!("self-test failed: {e}"))?;
        let sum: f32 = answer.top_k.iter().map(|(_, s)| s).sum();
        if (sum - 1.0).abs() > 1e-3 {
            return Err(format!("self-test: scores over all {labels} labels sum to {sum}, not 1"));
        }
        Ok(())
    }

    /// Checks a guest's `info()` against the model it names: the model is loaded, the input
    /// shape matches, and there is one unique label per model output.
    fn check_info(&self, info: &GuestInfo) -> Result<Arc<Model>, Vec<String>> {
        let mut reasons = Vec::new();
        let Some(model) = self.models.get(&info.model) else {
            return Err(vec![format!(
                "info().model '{}' is not loaded (loaded: {})",
                info.model,
                self.models.names().join(", ")
            )]);
        };
        let input = &model.manifest.input().shape;
        if &info.input_shape != input {
            reasons.push(format!(
                "info().input-shape {:?} differs from the model's {:?}",
                info.input_shape, input
            ));
        }
        let outputs = model.manifest.output().shape.last().copied().unwrap_or(0);
        if info.labels.len() as i64 != outputs {
            reasons.push(format!(
                "info().labels has {} labels; the model has {outputs} outputs",
                info.labels.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for label in &info.labels {
            if label.is_empty() || label.len() > 128 {
                reasons.push(format!("label '{label:.32}' must be 1 to 128 bytes"));
            } else if !seen.insert(label) {
                reasons.push(format!("label '{label}' appears twice"));
            }
        }
        if info.accepts.is_empty() {
            reasons.push("info().accepts lists no media type".into());
        }
        if reasons.is_empty() { Ok(Arc::clone(model)) } else { Err(reasons) }
    }

    fn new_store(&self, deadline: Instant) -> Store<State> {
        let limits = &self.limits;
        let stdout = GuestOutput::new(GUEST_OUTPUT_BYTES);
        let stderr = GuestOutput::new(GUEST_OUTPUT_BYTES);
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let state = State {
            wasi,
            table,
            models: Arc::clone(&self.models),
            nn: NnActivity::default(),
            nn_calls: limits.nn_calls,
            nn_bytes: limits.nn_bytes,
            expected: Expected::default(),
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                instances: limits.instances,
                tables: limits.tables,
                table_elements: limits.table_elements,
                memory_refused: None,
                table_refused: None,
            },
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(limits.transfer_bytes);
        store.set_max_component_handles(MAX_GUEST_HANDLES);
        // Check the deadline every tick and yield to the scheduler in between, so a spinning
        // guest neither outlives its deadline nor holds a tokio worker.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(DeadlineExceeded.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Runs `guest` on one clip in a fresh store; a trap, timeout or limit hit is counted
    /// against the guest in the metrics.
    pub async fn classify(
        &self,
        guest: &LoadedGuest,
        media: Vec<Media>,
        top_k: u32,
    ) -> Result<Classified, GuestError> {
        let result = self.run(guest, media, top_k).await;
        match &result {
            Err(GuestError::Trap { .. }) => METRICS.guest_trapped(&guest.name),
            Err(GuestError::Timeout { .. }) => METRICS.guest_timed_out(&guest.name),
            Err(GuestError::Limit { limit, .. }) => METRICS.guest_hit_limit(&guest.name, limit),
            _ => {}
        }
        result
    }

    /// Runs `guest` on one clip in a fresh store.
    async fn run(
        &self,
        guest: &LoadedGuest,
        media: Vec<Media>,
        top_k: u32,
    ) -> Result<Classified, GuestError> {
        let started = Instant::now();
        let deadline = self.limits.deadline;
        let mut store = self.new_store(started + deadline);
        store.data_mut().expected = guest.model.expect_call();
        let mut instantiated = None;
        let request = wit::Request {
            media: media
                .into_iter()
                .map(|m| wit::Media { content_type: m.content_type, data: m.data })
                .collect(),
            top_k,
        };
        // The epoch deadline stops guest code; this bounds the whole call, host calls included.
        let outcome = tokio::time::timeout(deadline + EPOCH_TICK * 10, async {
            let instance = guest.pre.instantiate_async(&mut store).await?;
            instantiated = Some(Instant::now());
            instance.motion_guest_classifier().call_classify(&mut store, &request).await
        })
        .await;
        let finished = Instant::now();
        self.log_guest_output(guest, &store);

        if let Some(busy) = &store.data().nn.busy {
            return Err(GuestError::Busy(busy.clone()));
        }
        let timeout = || GuestError::Timeout { guest: guest.name.clone(), limit: deadline };
        let answer = match outcome {
            Err(_) => return Err(timeout()),
            Ok(Err(e)) if e.downcast_ref::<DeadlineExceeded>().is_some() => return Err(timeout()),
            Ok(Err(e)) => {
                if let Some((limit, message)) = self.limit_hit(&store, &e) {
                    return Err(GuestError::Limit { guest: guest.name.clone(), limit, message });
                }
                let message = self.describe_trap(&store, &e);
                tracing::warn!(guest = %guest.name, digest = %guest.digest, error = %format!("{e:?}"), "guest trapped");
                return Err(GuestError::Trap { guest: guest.name.clone(), message });
            }
            Ok(Ok(Err(wit::Error::BadInput(m)))) => return Err(GuestError::BadInput(m)),
            Ok(Ok(Err(wit::Error::UnsupportedMedia(m)))) => return Err(GuestError::Unsupported(m)),
            Ok(Ok(Err(wit::Error::Inference(message)))) => {
                return Err(GuestError::Inference { guest: guest.name.clone(), message });
            }
            Ok(Ok(Ok(answer))) => answer,
        };

        let nn = &store.data().nn;
        let instantiate = instantiated.map_or(Duration::ZERO, |at| at.saturating_duration_since(started));
        let timings = match (nn.first_compute, nn.last_compute_end) {
            (Some(first), Some(last)) => StageTimings {
                instantiate,
                preprocess: first.saturating_duration_since(started),
                queue: nn.queue,
                inference: nn.inference,
                postprocess: finished.saturating_duration_since(last),
            },
            _ => StageTimings { instantiate, preprocess: finished - started, ..StageTimings::default() },
        };
        let batch_size = nn.batch_rows;
        let size = result_size(&answer);
        if size > self.limits.result_bytes {
            let message = format!(
                "its result is {size} bytes; the limit is {} (--guest-max-result-bytes)",
                self.limits.result_bytes
            );
            return Err(GuestError::Limit { guest: guest.name.clone(), limit: "result", message });
        }
        check_answer(guest, answer, top_k, timings, batch_size)
            .map_err(|message| GuestError::InvalidOutput { guest: guest.name.clone(), message })
    }

    /// Names the limit that stopped a guest, if one did: its short name and a message.
    fn limit_hit(&self, store: &Store<State>, error: &wasmtime::Error) -> Option<(&'static str, String)> {
        let limits = &self.limits;
        if let Some(asked) = store.data().limiter.memory_refused {
            return Some((
                "memory",
                format!(
                    "its memory limit is {} MiB and it asked for {} MiB (--guest-memory-bytes)",
                    limits.memory_bytes >> 20,
                    asked.div_ceil(1 << 20)
                ),
            ));
        }
        if let Some(asked) = store.data().limiter.table_refused {
            return Some((
                "table_elements",
                format!(
                    "its table limit is {} elements and it asked for {asked} (--guest-max-table-elements)",
                    limits.table_elements
                ),
            ));
        }
        if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
            return Some((limit.0, limit.1.clone()));
        }
        let text = format!("{error:#}");
        if text.contains("hostcalls has been exhausted") {
            return Some((
                "transfer",
                format!(
                    "it passed more than {} bytes to the host in one call (--guest-max-transfer-bytes)",
                    limits.transfer_bytes
                ),
            ));
        }
        if text.contains("resource limit exceeded") && text.contains("instance") {
            return Some((
                "instances",
                format!("it has more than {} instances (--guest-max-instances)", limits.instances),
            ));
        }
        if text.contains("resource limit exceeded") && text.contains("table") {
            return Some((
                "tables",
                format!("it has more than {} tables (--guest-max-tables)", limits.tables),
            ));
        }
        None
    }

    /// Names what stopped a guest: a limit, a trap code, or the error itself.
    fn describe_trap(&self, store: &Store<State>, error: &wasmtime::Error) -> String {
        if let Some((_, limit)) = self.limit_hit(store, error) {
            return format!("it exceeded a limit: {limit}");
        }
        if error.downcast_ref::<DeadlineExceeded>().is_some() {
            return format!("it ran past its deadline of {} ms", self.limits.deadline.as_millis());
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error}"),
        }
    }

    /// Copies what the guest wrote to stdout and stderr into the host log, tagged with the
    /// guest's name (at most [`GUEST_OUTPUT_BYTES`] of each per request; the rest is counted).
    fn log_guest_output(&self, guest: &LoadedGuest, store: &Store<State>) {
        for (stream, pipe) in [("stdout", &store.data().stdout), ("stderr", &store.data().stderr)] {
            let (bytes, dropped) = pipe.contents();
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                tracing::info!(guest = %guest.name, stream, output = %text.trim_end(), dropped_bytes = dropped, "guest output");
            }
        }
    }
}

/// Bytes in a guest's result: its strings and numbers.
fn result_size(c: &wit::Classification) -> usize {
    let entry = |label: &str| label.len() + 4;
    entry(&c.label) + c.top_k.iter().map(|e| entry(&e.label)).sum::<usize>() + 8
}

/// Checks a guest's answer against what it promised: labels it declared, a best-first top-k of
/// the asked size with finite probabilities, and a plausible frame count.
fn check_answer(
    guest: &LoadedGuest,
    c: wit::Classification,
    top_k: u32,
    timings: StageTimings,
    batch_size: usize,
) -> Result<Classified, String> {
    let expected = (top_k as usize).min(guest.info.labels.len());
    if c.top_k.len() != expected {
        return Err(format!("top-k has {} entries; {expected} were asked for", c.top_k.len()));
    }
    for entry in &c.top_k {
        if !guest.info.labels.contains(&entry.label) {
            return Err(format!("label '{:.64}' is not one of its declared labels", entry.label));
        }
        if !(entry.score.is_finite() && (0.0..=1.0).contains(&entry.score)) {
            return Err(format!("score {} of '{}' is not a probability", entry.score, entry.label));
        }
    }
    if c.top_k.windows(2).any(|w| w[0].score < w[1].score) {
        return Err("top-k is not ordered best first".into());
    }
    if c.top_k.first().is_some_and(|best| best.label != c.label || best.score != c.score) {
        return Err("label and score differ from the first top-k entry".into());
    }
    if c.frames_used == 0 || c.frames_used > c.frames_total {
        return Err(format!(
            "frames_used {} is outside 1..=frames_total ({})",
            c.frames_used, c.frames_total
        ));
    }
    Ok(Classified {
        label: c.label,
        score: c.score,
        top_k: c.top_k.into_iter().map(|e| (e.label, e.score)).collect(),
        frames_total: c.frames_total,
        frames_used: c.frames_used,
        timings,
        batch_size,
    })
}
