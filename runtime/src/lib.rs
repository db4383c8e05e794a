//! The guest runtime: one wasmtime [`Engine`] and [`Linker`] for the process, an
//! [`InstancePre`](wasmtime::component::InstancePre) per guest version compiled once off the
//! request path, and a fresh [`Store`] per request with its own memory cap and deadline.
//! Instances come from wasmtime's pooling allocator: memory, tables and stacks are reserved
//! once for as many guests as may run at once, and a guest's memory image is mapped
//! copy-on-write, so instantiating one per request costs microseconds.
//!
//! A guest gets an empty WASI context (no files, environment, arguments or sockets; clocks and
//! random numbers stay, as std needs them; stdout and stderr are captured into the host log)
//! and `wasi:nn` from motion-nn. A guest that traps, overruns its deadline or goes past a
//! limit fails its own request and nothing else; why it stopped is found from the error's type
//! and the store's records (`error.rs`), never from a message.
//!
//! The live guests sit behind an atomic pointer ([`ArcSwap`]): a request holds the `Arc` of the
//! version it started with, so replacing a guest never blocks or drops one.
//!
//! The modules depend one way: `limits`, `output`, `media`, `fuel`, `cache`,
//! `files` ← `store` ← `error`, `guest` ← `answer`, `guests` ← this file.

mod answer;
mod bindings;
mod cache;
mod cpu;
mod error;
pub mod files;
mod fuel;
mod guest;
mod guests;
mod limits;
pub mod media;
mod output;
mod profiler;
mod store;
mod world;

pub use answer::{Classified, Segment, StageTimings};
pub use cache::{CompileCache, Compiled, sha256_hex};
pub use error::GuestError;
pub use guest::{GuestInfo, LoadedGuest, Media, SampleRun, check_name, guest_digest, name_from_file};
pub use guests::{Canary, GuestSet, HISTORY, Role, RolledBack, Routed, SetError, Tally, Trial};
pub use limits::Limits;
pub use profiler::GuestProfiler;
pub use store::open_stores;
pub use world::Segmentation;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};

use cpu::Cores;
use error::Stop;
use fuel::FuelRefusal;
use limits::{MAX_GUEST_MEMORIES, MemoryReset};
use motion_model::{Expected, Model, ModelRegistry, Progress, Stage};
use store::State;
use world::{Pre, Refusal};

/// How often the epoch ticks: the granularity of deadlines and of yielding to the scheduler.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process's wasm engine, linker and live guests.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    models: Arc<ModelRegistry>,
    limits: Limits,
    guests: ArcSwap<GuestSet>,
    cache: Option<CompileCache>,
    /// How this engine refuses a copy past the hostcall fuel.
    fuel: FuelRefusal,
    /// Where requests' guests wait for a core, in arrival order.
    cores: Cores,
    /// Serialises changes to the guest set; readers never take it.
    writer: Mutex<()>,
    ticking: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl Runtime {
    /// A runtime serving `models` to at most `concurrency` requests at once; `cache_dir` keeps
    /// compiled guests across restarts; `profiler` says what profilers learn of guest code.
    pub fn new(
        models: Arc<ModelRegistry>,
        limits: Limits,
        concurrency: u32,
        cache_dir: Option<PathBuf>,
        profiler: GuestProfiler,
    ) -> anyhow::Result<Runtime> {
        // Wasmtime opens the profiler's file as the engine is made and says only why it could
        // not: open it first, so the error names the file and the flag.
        if let Some(file) = profiler.file() {
            std::fs::OpenOptions::new().append(true).create(true).open(&file).map_err(|e| {
                anyhow::anyhow!("--guest-profiler {profiler}: cannot write {}: {e}", file.display())
            })?;
        }
        let engine = |reset| {
            let mut config = Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            profiler.apply(&mut config);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(limits::pooling(
                &limits,
                concurrency,
                reset,
            )));
            Engine::new(&config)
        };
        // Wasmtime refuses the first where the kernel has no PAGEMAP_SCAN (before Linux 6.7).
        let engine = engine(MemoryReset::KeepDirtyPages).or_else(|e| {
            tracing::info!(reason = %e, "guest memory is handed back to the kernel after each request");
            engine(MemoryReset::HandBack)
        })?;

        let mut linker = Linker::new(&engine);
        store::add_to_linker(&mut linker)?;
        let fuel = FuelRefusal::learn(&engine)?;

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
            fuel,
            cores: Cores::of_this_process(),
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
        self.change(|set| Ok(set.with_installed(guest))).unwrap_or(false)
    }

    /// Removes `name`'s canary if it has one, else puts `name` back on its previous version.
    pub fn rollback(&self, name: &str) -> Result<RolledBack, SetError> {
        self.change(|set| set.with_rollback(name))
    }

    /// Runs `guest` beside the live version of its name, on `percent` of its traffic.
    pub fn install_canary(&self, guest: Arc<LoadedGuest>, percent: u8) -> Result<(), SetError> {
        self.change(|set| Ok((set.with_canary(guest, percent)?, ())))
    }

    /// Makes `name`'s canary live (if it is still the version `digest`, when given) and
    /// returns it.
    pub fn promote(&self, name: &str, digest: Option<&str>) -> Result<Arc<LoadedGuest>, SetError> {
        self.change(|set| set.with_promoted(name, digest))
    }

    /// Removes `name`'s canary if it is still the version `digest`.
    pub fn drop_canary(&self, name: &str, digest: &str) -> Result<(), SetError> {
        self.change(|set| Ok((set.without_canary(name, digest)?, ())))
    }

    /// Removes the non-default guest `name`; returns the version that was live.
    pub fn remove(&self, name: &str) -> Result<Arc<LoadedGuest>, SetError> {
        self.change(|set| {
            let live = Arc::clone(set.get(name).ok_or_else(|| SetError::Unknown(name.into()))?);
            Ok((set.without(name)?, live))
        })
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
    /// world, checks what it needs against the limits and its `info()` against the model it
    /// names, and sends it a sample clip of each media type it accepts. Every failure is a
    /// reason; nothing goes live.
    pub async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<LoadedGuest>, GuestError> {
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
        if let Some(needs) = component.resources_required() {
            let mut reasons = Vec::new();
            if needs.num_tables as usize > self.limits.tables {
                reasons.push(format!(
                    "it defines {} tables; the limit is {} (--guest-max-tables)",
                    needs.num_tables, self.limits.tables
                ));
            }
            if needs.num_memories > MAX_GUEST_MEMORIES {
                reasons.push(format!(
                    "it defines {} linear memories; a guest may have {MAX_GUEST_MEMORIES}",
                    needs.num_memories
                ));
            }
            if !reasons.is_empty() {
                return Err(rejected(reasons));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| rejected(vec![format!("does not fit the motion-guest world: {e:#}")]))?;
        let pre = Pre::new(pre).map_err(|e| rejected(vec![e]))?;

        let mut store = self.new_store(
            Instant::now() + self.limits.deadline,
            Expected::default(),
            Progress::new(Stage::Guest),
        );
        let guest = pre.instantiate(&mut store).await.map_err(|e| {
            rejected(vec![format!(
                "cannot be instantiated within its limits (--guest-max-instances, --guest-max-tables, \
                 --guest-memory-bytes): {}",
                Stop::of(&store, &e, &self.limits, &self.fuel).describe(&self.limits)
            )])
        })?;
        let info = guest.info(&mut store).await.map_err(|e| {
            rejected(vec![format!(
                "info() failed: {}",
                Stop::of(&store, &e, &self.limits, &self.fuel).describe(&self.limits)
            )])
        })?;
        let model = self.check_info(&info).map_err(rejected)?;
        let mut guest = LoadedGuest {
            name: name.to_string(),
            info,
            digest,
            size,
            model,
            loaded_at: SystemTime::now(),
            validation: Duration::ZERO,
            samples: Vec::new(),
            unsampled: Vec::new(),
            compiled,
            pre,
        };
        let (samples, unsampled) = self.exercise(&guest).await?;
        guest.samples = samples;
        guest.unsampled = unsampled;
        guest.validation = started.elapsed();
        Ok(Arc::new(guest))
    }

    /// Sends a sample upload of every media type the guest accepts through it, as a request
    /// would come (the same store, limits and deadline), and checks each answer's scores form a
    /// distribution: the whole path works, with uploads large enough to reach every allocator
    /// path, before the guest goes live. A type the host has no sample of is reported, not
    /// failed; a guest none of whose types has a sample cannot be exercised and is refused. A
    /// full model queue is the server's state: it is waited out for up to the guest deadline,
    /// then answered as `Busy`.
    async fn exercise(&self, guest: &LoadedGuest) -> Result<(Vec<SampleRun>, Vec<String>), GuestError> {
        let rejected = |reasons| GuestError::Rejected { name: guest.name.clone(), reasons };
        let (mut runs, mut unsampled, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        let labels = guest.info.labels.len() as u32;
        let mut accepted: Vec<String> = Vec::new();
        for media_type in guest.info.accepts.iter().map(|a| motion_request::essence(a)) {
            if !accepted.iter().any(|seen| seen.eq_ignore_ascii_case(&media_type)) {
                accepted.push(media_type);
            }
        }
        for media_type in accepted {
            let wanted = media_type.clone();
            let sample = tokio::task::spawn_blocking(move || media::sample(&wanted))
                .await
                .map_err(|e| format!("making the {media_type} sample did not finish: {e}"))
                .and_then(|made| made)
                .map_err(|reason| rejected(vec![reason]))?;
            let Some(sample) = sample else {
                unsampled.push(media_type);
                continue;
            };
            let run = SampleRun {
                media_type: sample.media_type.to_string(),
                bytes: sample.bytes(),
                parts: sample.parts.len(),
                frames: sample.frames,
                width: sample.width,
                height: sample.height,
                took: Duration::ZERO,
            };
            // The guest gets its own copy of the sample's media for each attempt.
            let media = || -> Vec<Media> {
                sample
                    .parts
                    .iter()
                    .map(|(content_type, data)| Media {
                        content_type: content_type.to_string(),
                        data: data.clone(),
                    })
                    .collect()
            };
            // A full queue is the server's state, not the guest's fault: wait for room, and say
            // so if there is none.
            let mut busy_since = None;
            let answer = loop {
                let started = Instant::now();
                match self
                    .classify(guest, media(), labels, None, &Progress::new(Stage::Guest), Expected::default())
                    .await
                {
                    Err(GuestError::Busy(message)) => {
                        let since = *busy_since.get_or_insert(started);
                        if since.elapsed() > self.limits.deadline {
                            return Err(GuestError::Busy(format!(
                                "validation could not run {}: {message}",
                                run.describe()
                            )));
                        }
                        tokio::time::sleep(EPOCH_TICK * 10).await;
                    }
                    outcome => break outcome.map(|answer| (answer, started.elapsed())),
                }
            };
            match answer {
                Ok((answer, took)) => {
                    let sum: f32 = answer.top_k.iter().map(|(_, s)| s).sum();
                    if (sum - 1.0).abs() > 1e-3 {
                        reasons.push(format!(
                            "{}: scores over all {labels} labels sum to {sum}, not 1",
                            run.describe()
                        ));
                    }
                    runs.push(SampleRun { took, ..run });
                }
                Err(e) => reasons.push(format!("{} failed: {e}", run.describe())),
            }
        }
        if runs.is_empty() && reasons.is_empty() {
            reasons.push(format!(
                "info().accepts lists no media type the host has a sample of ({}), so it cannot be \
                 exercised before it goes live",
                media::sampled_types().join(", ")
            ));
        }
        if reasons.is_empty() { Ok((runs, unsampled)) } else { Err(rejected(reasons)) }
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

    fn new_store(&self, deadline: Instant, expected: Expected, progress: Progress) -> Store<State> {
        store::new_store(&self.engine, &self.models, &self.limits, deadline, expected, progress)
    }

    /// Runs `guest` on one clip in a fresh store, once a core is free for it (`cpu.rs`); its
    /// deadline and stage timings start then. `progress` is the request's stage: the guest's
    /// model calls move it to the queue and back. `announced` is the request's announcement of
    /// its model call if it made one already (while its body arrived), else `Expected::default()`.
    /// Dropping the returned future stops the guest where it is and frees its store.
    pub async fn classify(
        &self,
        guest: &LoadedGuest,
        media: Vec<Media>,
        top_k: u32,
        segments: Option<Segmentation>,
        progress: &Progress,
        announced: Expected,
    ) -> Result<Classified, GuestError> {
        let max_segments = match segments {
            Some(_) if !guest.segments() => {
                return Err(GuestError::BadRequest(format!(
                    "guest '{}' speaks {}, which has no timeline: segment and segment_frames need a {} guest",
                    guest.name,
                    guest.world(),
                    world::V0_2
                )));
            }
            Some(_) => Some(self.max_segments(guest, top_k)),
            None => None,
        };
        progress.enter(Stage::Guest);
        // Announced before it waits for a core, so a batch being gathered waits for it too.
        let expected = guest.model.take_announced(announced);
        let core = self.cores.take().await;
        let started = Instant::now();
        let deadline = self.limits.deadline;
        let mut store = self.new_store(started + deadline, expected, progress.clone());
        store.data_mut().nn.hold_until_compute(core);
        let mut instantiated = None;
        let request = world::Request { media, top_k, segments, max_segments: max_segments.unwrap_or(0) };
        // The epoch deadline stops guest code; this bounds the whole call, host calls included.
        let outcome = tokio::time::timeout(deadline + EPOCH_TICK * 10, async {
            let instance = guest.pre.instantiate(&mut store).await?;
            instantiated = Some(Instant::now());
            instance.classify(&mut store, request).await
        })
        .await;
        let finished = Instant::now();
        store::log_guest_output(&guest.name, &store);

        let name = || guest.name.clone();
        let answer = match outcome {
            Err(_) => return Err(GuestError::Timeout { guest: name(), limit: deadline }),
            Ok(Err(e)) => {
                return Err(match Stop::of(&store, &e, &self.limits, &self.fuel) {
                    Stop::Timeout => GuestError::Timeout { guest: name(), limit: deadline },
                    Stop::Busy(message) => GuestError::Busy(message),
                    Stop::Limit { limit, message } => GuestError::Limit { guest: name(), limit, message },
                    Stop::Trap(message) => {
                        tracing::warn!(guest = %guest.name, digest = %guest.digest, error = %format!("{e:?}"), "guest trapped");
                        GuestError::Trap { guest: name(), message }
                    }
                });
            }
            Ok(Ok(Err(Refusal::BadInput(m)))) => return Err(GuestError::BadInput(m)),
            Ok(Ok(Err(Refusal::Unsupported(m)))) => return Err(GuestError::Unsupported(m)),
            Ok(Ok(Err(Refusal::BadRequest(m)))) => return Err(GuestError::BadRequest(m)),
            Ok(Ok(Err(Refusal::Inference(message)))) => {
                return Err(GuestError::Inference { guest: name(), message });
            }
            Ok(Ok(Ok(answer))) => answer,
        };

        let nn = store.data().nn();
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
        let size = answer::result_size(&answer);
        if size > self.limits.result_bytes {
            let message = format!(
                "its result is {size} bytes; the limit is {} (--guest-max-result-bytes)",
                self.limits.result_bytes
            );
            return Err(GuestError::Limit { guest: name(), limit: "result", message });
        }
        answer::check_answer(guest, answer, top_k, max_segments, timings, batch_size)
            .map_err(|message| GuestError::InvalidOutput { guest: name(), message })
    }

    /// The most windows one request's timeline may have: each is one more row of the model's
    /// input (`--guest-max-nn-bytes`, less the whole clip's row) and one more entry in the
    /// guest's result (`--guest-max-result-bytes`, less the whole clip's answer, at `top_k`
    /// labels of the guest's longest name). The deadline bounds the decoding, not the count.
    pub fn max_segments(&self, guest: &LoadedGuest, top_k: u32) -> u32 {
        let row_bytes =
            guest.model.manifest.input().shape.iter().skip(1).map(|&d| d.max(1) as usize).product::<usize>()
                * 4;
        let by_rows = (self.limits.nn_bytes / row_bytes.max(1)).saturating_sub(1);
        let longest = guest.info.labels.iter().map(String::len).max().unwrap_or(0) + 4;
        let labels = (top_k as usize).clamp(1, guest.info.labels.len().max(1));
        let whole = longest * (labels + 1) + 8;
        let per_segment = answer::SEGMENT_FIXED_BYTES + longest * (labels + 1);
        let by_result = self.limits.result_bytes.saturating_sub(whole) / per_segment;
        u32::try_from(by_rows.min(by_result)).unwrap_or(u32::MAX)
    }
}
