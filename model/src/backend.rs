//! The tch (libtorch) backend: each model runs on its own dedicated inference thread, never on
//! a tokio worker, with gradients off. Concurrent requests queue on that thread's channel; the
//! thread gathers what is queued into one forward pass, waiting up to `--max-batch-delay` after
//! the first call for up to `--max-batch-size` rows, and each caller gets its own rows back. A
//! batch that fails is retried call by call, so only the call at fault fails. A batch waits
//! only while a call may still come: requests announce themselves when they start
//! ([`Model::expect_call`]), so a lone request never waits for company that is not there. A batch is
//! assembled in one buffer made at start (page-locked on CUDA): one copy of each caller's rows.
//!
//! Architecture invariant: only this crate touches tch, and no tch type leaves it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tch::{CModule, Device, Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

use crate::device::DeviceKind;
use crate::error::BackendError;
use crate::manifest::{Manifest, TensorSpec};
use crate::optimised::Optimised;
use crate::precision::Precision;
use crate::progress::{Progress, Stage};

/// Hears of every forward pass: the model's name and the rows it ran (for a batch-size
/// histogram, which the caller keeps).
pub type BatchObserver = Arc<dyn Fn(&str, usize) + Send + Sync>;

/// Most rows one caller may send in one call.
pub const MAX_ROWS_PER_CALL: u32 = 64;
/// How a model's inference thread runs.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Calls that may wait for the inference thread before callers are turned away.
    pub max_queue: usize,
    /// Most rows in one forward pass (a single larger call still runs, alone).
    pub max_batch: usize,
    /// How long the first call of a batch may wait for announced calls; zero takes only what
    /// is queued, `None` the device's default ([`Tuning::default_batch_delay`]).
    pub batch_delay: Option<Duration>,
    /// What the weights and the forward pass run in; inputs and outputs stay FP32.
    pub precision: Precision,
    /// Whether an FP32 model on the CPU is frozen and optimised for inference at load
    /// (`optimised.rs`); otherwise, and elsewhere, the module runs as its file has it.
    pub optimise: bool,
}

impl Tuning {
    /// How long a batch waits for announced calls unless told. On the CPU a forward pass takes
    /// the cores from the guests preparing the next calls (they run below its priority), so a
    /// batch started while some are still preparing leaves them waiting its whole length, and
    /// the next batch is small: it waits for them, up to 50 ms. A GPU runs the batch beside
    /// them: 2 ms.
    pub fn default_batch_delay(device: DeviceKind) -> Duration {
        match device {
            DeviceKind::Cpu => Duration::from_millis(50),
            DeviceKind::Cuda(_) => Duration::from_millis(2),
        }
    }

    /// The batch delay on `device`: as told, or the device's default.
    pub fn batch_delay_on(&self, device: DeviceKind) -> Duration {
        self.batch_delay.unwrap_or_else(|| Tuning::default_batch_delay(device))
    }
}

/// Where the models run, as `--device` asked and the machine allows.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    pub device: DeviceKind,
    /// Why this device, for the start-up log.
    pub reason: String,
}

impl DeviceChoice {
    /// Checks the syntax of `--device` without touching any device (before sockets open).
    pub fn check(spec: &str) -> Result<(), BackendError> {
        parse_device(spec).map(drop)
    }

    /// Resolves `--device auto|cpu|cuda|cuda:N`. `auto` and `cuda` first try to load libtorch's
    /// CUDA library (the binary links only the CPU one), so the same binary uses a GPU where the
    /// platform gives one.
    pub fn resolve(spec: &str) -> Result<DeviceChoice, BackendError> {
        let cuda_index = match parse_device(spec)? {
            Wanted::Cpu => {
                return Ok(DeviceChoice { device: DeviceKind::Cpu, reason: "--device cpu".into() });
            }
            Wanted::Auto => None,
            Wanted::Cuda(n) => Some(n),
        };
        let cuda = cuda::load();
        let devices = if cuda.is_ok() && tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
        match cuda_index {
            None if devices > 0 => Ok(DeviceChoice {
                device: DeviceKind::Cuda(0),
                reason: format!("--device auto found {devices} CUDA device(s)"),
            }),
            None => Ok(DeviceChoice {
                device: DeviceKind::Cpu,
                reason: match cuda {
                    Err(why) => format!("--device auto: no CUDA ({why})"),
                    Ok(()) => "--device auto: CUDA libraries loaded but no GPU is visible".into(),
                },
            }),
            Some(n) if (n as i64) < devices => {
                Ok(DeviceChoice { device: DeviceKind::Cuda(n), reason: format!("--device cuda:{n}") })
            }
            Some(n) => Err(BackendError::Device(match cuda {
                Err(why) => format!("--device cuda:{n} asked for, but CUDA is unusable: {why}"),
                Ok(()) => format!("--device cuda:{n} asked for, but {devices} CUDA device(s) are visible"),
            })),
        }
    }
}

/// What `--device` asks for.
enum Wanted {
    Cpu,
    /// A GPU if there is one, else the CPU.
    Auto,
    Cuda(usize),
}

fn parse_device(spec: &str) -> Result<Wanted, BackendError> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Wanted::Cpu),
        "auto" => Ok(Wanted::Auto),
        "cuda" => Ok(Wanted::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Wanted::Cuda(n)),
            _ => Err(BackendError::Device(format!("--device '{other}' is not auto, cpu, cuda or cuda:N"))),
        },
    }
}

mod cuda {
    //! Loading `libtorch_cuda.so` at start. The binary links libtorch's CPU libraries only; once
    //! the CUDA library is loaded (its static initialisers register the CUDA kernels),
    //! `tch::Cuda::is_available()` reports the GPUs.

    use std::ffi::CString;

    /// Where to look: `MOTION_HOST_LIBTORCH_CUDA` (a file), then `$LIBTORCH/lib`, then the
    /// loader's own search path.
    pub fn load() -> Result<(), String> {
        let mut candidates = Vec::new();
        if let Ok(path) = std::env::var("MOTION_HOST_LIBTORCH_CUDA") {
            candidates.push(path);
        }
        if let Ok(dir) = std::env::var("LIBTORCH") {
            candidates.push(format!("{dir}/lib/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".into());
        let mut last = String::new();
        for candidate in &candidates {
            let Ok(name) = CString::new(candidate.as_str()) else { continue };
            // SAFETY: dlopen with a valid C string; the handle is kept for the process's life.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return Ok(());
            }
            // SAFETY: dlerror returns null or a valid C string owned by libc.
            let err = unsafe { libc::dlerror() };
            last = if err.is_null() {
                "unknown error".into()
            } else {
                unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
            };
        }
        Err(format!("libtorch_cuda.so not loadable: {last}"))
    }
}

/// A tensor to run: its shape and its FP32 data as little-endian bytes.
#[derive(Debug)]
pub struct Input {
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

/// The model's answer to one call, with where the time went.
#[derive(Debug)]
pub struct Output {
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
    /// Waiting for the inference thread.
    pub queue: Duration,
    /// The forward pass (shared by the batch this call ran in).
    pub inference: Duration,
    /// Rows in that forward pass.
    pub batch_rows: usize,
}

struct Job {
    input: Input,
    /// Settled when the inference thread takes the job, so a batch never waits for a call it
    /// already holds.
    expected: Expected,
    /// The request's stage: the call's rows run only if it is still wanted when its forward
    /// pass starts.
    progress: Progress,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Output, BackendError>>,
}

/// A loaded model and the channel to its inference thread.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    /// Hex sha256 of the model file.
    pub sha256: String,
    pub device: DeviceKind,
    pub precision: Precision,
    /// Whether its forward pass runs the module frozen and optimised for inference
    /// ([`Tuning::optimise`]), not as its file has it.
    pub optimised: bool,
    /// How its inference thread batches: what Triton's model configuration reports.
    pub batching: Batching,
    jobs: mpsc::Sender<Job>,
    /// Requests expected to call this model that have not yet.
    expected: Arc<Announced>,
}

/// How a model's inference thread batches calls, fixed at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows in one forward pass at most (`--max-batch-size`); one call may carry up to
    /// [`MAX_ROWS_PER_CALL`].
    pub max_rows: usize,
    /// How long a batch may wait for a call that was announced (`--max-batch-delay`).
    pub max_delay: Duration,
}

/// A request's promise that it will call a model; kept until the inference thread takes its
/// call or the request ends. While any is outstanding, a batch may wait (up to
/// `--max-batch-delay`) for it.
#[derive(Debug, Default)]
pub struct Expected(Option<Arc<Announced>>);

impl Expected {
    /// The call has been taken by the inference thread (or will never come).
    pub fn settle(&mut self) {
        if let Some(announced) = self.0.take()
            && announced.count.fetch_sub(1, Ordering::AcqRel) == 1
        {
            // The last one: a batch waiting for calls to come need wait no longer.
            announced.none_left.notify_one();
        }
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.settle();
    }
}

/// The calls announced to a model and not yet made, shared by its [`Expected`]s and its
/// inference thread; the thread is woken when the last one is settled, so a batch waiting for an
/// announced call that will not come (its request ended, or gave its announcement up) starts at
/// once instead of at the end of its delay.
#[derive(Debug, Default)]
struct Announced {
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl Announced {
    fn outstanding(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("dims", &self.input.dims).finish()
    }
}

impl Model {
    /// Starts the model's inference thread, loads the TorchScript file onto the device and runs
    /// a warm-up forward pass; returns once the model is ready or has failed to load.
    pub fn load(
        manifest: Manifest,
        file: &Path,
        sha256: String,
        device: &DeviceChoice,
        tuning: Tuning,
        batches: BatchObserver,
    ) -> Result<Model, BackendError> {
        let (jobs, queue) = mpsc::channel(tuning.max_queue.max(1));
        let expected = Arc::new(Announced::default());
        let waiting_for = Arc::clone(&expected);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let file = file.to_path_buf();
        let kind = device.device;
        let device = kind.tch();
        let input_spec = manifest.input().clone();
        let output_spec = manifest.output().clone();
        let name = manifest.name.clone();
        std::thread::Builder::new()
            .name(format!("infer-{}", manifest.name))
            .spawn(move || {
                tch::set_num_threads(tuning.threads.max(1) as i32);
                let _no_grad = tch::no_grad_guard();
                let capacity = tuning.max_batch.max(MAX_ROWS_PER_CALL as usize);
                let weights = tuning.precision.kind();
                let loaded = load_and_warm(
                    &file,
                    device,
                    weights,
                    tuning.optimise,
                    &input_spec,
                    &output_spec,
                    tuning.max_batch,
                )
                .and_then(|graph| Ok((graph, Staging::new(&input_spec, capacity, device)?)));
                match loaded {
                    Ok((graph, staging)) => {
                        let _ = ready_tx.send(Ok(matches!(graph, Graph::Optimised(_))));
                        let pass = Pass { graph, device, kind: weights, output: output_spec, name, batches };
                        serve(&pass, staging, queue, &waiting_for, tuning, tuning.batch_delay_on(kind));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| BackendError::Torch(format!("cannot start the inference thread: {e}")))?;
        let optimised = ready_rx.recv().map_err(|_| BackendError::Stopped)??;
        let batching = Batching { max_rows: tuning.max_batch.max(1), max_delay: tuning.batch_delay_on(kind) };
        Ok(Model {
            manifest,
            sha256,
            device: kind,
            precision: tuning.precision,
            optimised,
            batching,
            jobs,
            expected,
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Checks a tensor against the model's input before it is queued: its type, rank,
    /// dimensions (the batch may be 1..=64) and byte length.
    pub fn check_input(&self, dims: &[u32], is_fp32: bool, bytes: usize) -> Result<(), BackendError> {
        let spec = self.manifest.input();
        let bad = |m: String| Err(BackendError::InvalidInput(m));
        if !is_fp32 {
            return bad(format!("input '{}' must be FP32", spec.name));
        }
        if dims.len() != spec.shape.len() {
            return bad(format!("input '{}' must have shape {:?}, got {dims:?}", spec.name, spec.shape));
        }
        if dims[0] == 0 || dims[0] > MAX_ROWS_PER_CALL {
            return bad(format!(
                "input '{}' batch of {} is outside 1..={MAX_ROWS_PER_CALL}",
                spec.name, dims[0]
            ));
        }
        if dims[1..].iter().zip(&spec.shape[1..]).any(|(&d, &s)| i64::from(d) != s) {
            return bad(format!("input '{}' must have shape {:?}, got {dims:?}", spec.name, spec.shape));
        }
        let expected = dims.iter().map(|&d| d as usize).product::<usize>() * 4;
        if bytes != expected {
            return bad(format!(
                "input '{}' of shape {dims:?} needs {expected} bytes, got {bytes}",
                spec.name
            ));
        }
        Ok(())
    }

    /// Announces a request that will call this model: batches being gathered wait for it.
    pub fn expect_call(&self) -> Expected {
        self.expected.count.fetch_add(1, Ordering::AcqRel);
        Expected(Some(Arc::clone(&self.expected)))
    }

    /// `announced` if it is an outstanding announcement of a call to this model, else a new
    /// one (the other is settled as it is dropped): a request announced while its body was
    /// still arriving keeps its place without a moment unannounced.
    pub fn take_announced(&self, announced: Expected) -> Expected {
        match &announced.0 {
            Some(count) if Arc::ptr_eq(count, &self.expected) => announced,
            _ => self.expect_call(),
        }
    }

    /// Runs the model on an FP32 `input`, checked first with [`Model::check_input`]; `expected`
    /// is settled when the inference thread takes the call (or at once, if it is refused). The
    /// call is in [`Stage::Queue`] until its forward pass starts ([`Stage::Inference`]); a
    /// request given up on before then never has its rows run.
    pub async fn infer(
        &self,
        input: Input,
        expected: &mut Expected,
        progress: &Progress,
    ) -> Result<Output, BackendError> {
        if let Err(e) = self.check_input(&input.dims, true, input.data.len()) {
            expected.settle();
            return Err(e);
        }
        let (reply, answer) = oneshot::channel();
        progress.enter(Stage::Queue);
        let job = Job {
            input,
            expected: std::mem::take(expected),
            progress: progress.clone(),
            enqueued: Instant::now(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackendError::Busy(self.jobs.max_capacity()),
            mpsc::error::TrySendError::Closed(_) => BackendError::Stopped,
        })?;
        answer.await.map_err(|_| BackendError::Stopped)?
    }
}

/// A TorchScript model run directly on the CPU, with no inference thread, queue or batching
/// around it: the benchmark's floor.
pub struct BareModel {
    graph: Graph,
    kind: Kind,
}

/// Random input for a [`BareModel`], in its precision.
pub struct BareInput {
    tensor: Tensor,
}

impl BareModel {
    /// Loads `file` onto the CPU in eval mode at `precision`, with `threads` intra-op threads,
    /// optimised for inference as the server's would be (`optimise`, FP32 only).
    pub fn load(
        file: &Path,
        threads: usize,
        precision: Precision,
        optimise: bool,
    ) -> Result<BareModel, BackendError> {
        tch::set_num_threads(threads.max(1) as i32);
        let kind = precision.kind();
        let graph = Graph::load(file, Device::Cpu, kind, optimise)?;
        Ok(BareModel { graph, kind })
    }

    /// Whether the forward pass runs the module optimised for inference.
    pub fn optimised(&self) -> bool {
        matches!(self.graph, Graph::Optimised(_))
    }

    /// An input of `shape` with values drawn uniformly from [0, 1).
    pub fn random_input(&self, shape: &[i64]) -> Result<BareInput, BackendError> {
        let tensor = Tensor::f_rand(shape, (self.kind, Device::Cpu)).map_err(torch_err)?;
        Ok(BareInput { tensor })
    }

    /// One forward pass, gradients off; the output is dropped.
    pub fn forward(&self, input: &BareInput) -> Result<(), BackendError> {
        let _no_grad = tch::no_grad_guard();
        self.graph.forward(&input.tensor).map(drop)
    }
}

fn torch_err(e: tch::TchError) -> BackendError {
    BackendError::Torch(e.to_string())
}

/// Casts a module's weights to `kind` on `device` (nothing to do for FP32). tch's conversion
/// panics on a libtorch error: that becomes an error here.
fn convert(module: &mut CModule, device: Device, kind: Kind) -> Result<(), BackendError> {
    if kind == Kind::Float {
        return Ok(());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| module.to(device, kind, false)))
        .map_err(|_| BackendError::Torch(format!("cannot convert the model's weights to {kind:?}")))
}

/// A model's forward pass: the TorchScript module as tch runs it, or optimised for inference.
enum Graph {
    Plain(CModule),
    Optimised(Optimised),
}

impl Graph {
    /// Loads `file` onto `device` in eval mode with its weights in `kind`: optimised for
    /// inference when asked to and it is FP32 on the CPU, and as the file has it otherwise or
    /// when libtorch cannot optimise it (a warning says why).
    fn load(file: &Path, device: Device, kind: Kind, optimise: bool) -> Result<Graph, BackendError> {
        if optimise && device == Device::Cpu && kind == Kind::Float {
            match Optimised::load(file) {
                Ok(optimised) => return Ok(Graph::Optimised(optimised)),
                Err(reason) => tracing::warn!(
                    file = %file.display(),
                    %reason,
                    "the model cannot be optimised for inference; it runs as its file has it"
                ),
            }
        }
        let mut module = CModule::load_on_device(file, device).map_err(torch_err)?;
        module.set_eval();
        convert(&mut module, device, kind)?;
        Ok(Graph::Plain(module))
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor, BackendError> {
        match self {
            Graph::Plain(module) => module.forward_ts(&[input]).map_err(torch_err),
            Graph::Optimised(optimised) => optimised.forward(input).map_err(BackendError::Torch),
        }
    }
}

/// Loads the module onto `device` with its weights in `kind` (optimised if `optimise` and it
/// can be), and warms it up.
fn load_and_warm(
    file: &Path,
    device: Device,
    kind: Kind,
    optimise: bool,
    input: &TensorSpec,
    output: &TensorSpec,
    max_batch: usize,
) -> Result<Graph, BackendError> {
    let graph = Graph::load(file, device, kind, optimise)?;
    // The first passes at a batch size pay for libtorch's kernel set-up (and TorchScript's
    // profiling runs, which come before its optimised plan): pay them now, for a lone call and
    // for a full batch, and check the output against the manifest.
    for rows in [1, max_batch.max(1)] {
        let mut shape = input.shape.clone();
        shape[0] = rows as i64;
        let warm = Tensor::f_zeros(&shape, (kind, device)).map_err(torch_err)?;
        for _ in 0..WARM_UP_PASSES {
            let warm_output = graph.forward(&warm)?;
            check_output(&warm_output.size(), rows, output)
                .map_err(|e| BackendError::Output(format!("warm-up with {rows} row(s): {e}")))?;
        }
    }
    Ok(graph)
}

/// Forward passes at each warm-up batch size: TorchScript's profiling executor runs a graph as
/// it is twice before it runs its optimised plan.
const WARM_UP_PASSES: usize = 3;

/// Checks that a forward pass over `rows` rows returned `[rows, ...]` as the manifest's output
/// says.
fn check_output(dims: &[i64], rows: usize, spec: &TensorSpec) -> Result<(), String> {
    let fits = dims.len() == spec.shape.len()
        && dims.first() == Some(&(rows as i64))
        && dims[1..] == spec.shape[1..];
    if fits {
        Ok(())
    } else {
        let mut wanted = spec.shape.clone();
        wanted[0] = rows as i64;
        Err(format!(
            "the model returned shape {dims:?} for {rows} row(s), but its manifest's output '{}' is {:?} (here {wanted:?})",
            spec.name, spec.shape
        ))
    }
}

/// The host-side buffer a batch is assembled in, made once per inference thread: each caller's
/// rows are copied into it once, with no allocation per batch, and on CUDA it is page-locked
/// so the batch reaches the GPU in one asynchronous copy.
struct Staging {
    /// `[capacity, ...row shape]` FP32, contiguous, on the CPU.
    tensor: Tensor,
    row_bytes: usize,
    capacity: usize,
}

impl Staging {
    fn new(input: &TensorSpec, capacity: usize, device: Device) -> Result<Staging, BackendError> {
        let row_shape = &input.shape[1..];
        let mut shape = vec![capacity as i64];
        shape.extend(row_shape);
        let mut tensor = Tensor::f_empty(&shape, (Kind::Float, Device::Cpu)).map_err(torch_err)?;
        if device.is_cuda() {
            tensor = tensor.f_pin_memory(device).map_err(torch_err)?;
        }
        let row_bytes = row_shape.iter().product::<i64>() as usize * 4;
        Ok(Staging { tensor, row_bytes, capacity })
    }

    /// The batch's rows, concatenated: a view of the buffer. The buffer holds the largest batch
    /// and the largest single call, so every batch fits.
    fn fill(&mut self, batch: &[Job], rows: usize) -> Result<Tensor, BackendError> {
        if rows > self.capacity {
            return Err(BackendError::InvalidInput(format!(
                "a batch of {rows} rows exceeds the staging buffer's {}",
                self.capacity
            )));
        }
        let base = self.tensor.data_ptr().cast::<u8>();
        let mut offset = 0;
        for job in batch {
            let data = &job.input.data;
            // check_input guaranteed whole rows of this model's shape; re-check what the copy
            // below relies on.
            if data.len() % self.row_bytes != 0 || offset + data.len() > rows * self.row_bytes {
                return Err(BackendError::InvalidInput(format!(
                    "a call's {} bytes are not whole rows of {} bytes",
                    data.len(),
                    self.row_bytes
                )));
            }
            // SAFETY: the buffer is a contiguous CPU tensor of `capacity * row_bytes` bytes owned
            // by this thread; `offset + data.len() <= rows * row_bytes <= capacity * row_bytes`
            // was checked above, and a Vec cannot overlap a tensor's storage.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) };
            offset += data.len();
        }
        self.tensor.f_narrow(0, 0, rows as i64).map_err(torch_err)
    }
}

/// What a forward pass needs: the module, its device and precision, the output it must return,
/// and whom to tell of each batch.
struct Pass {
    graph: Graph,
    device: Device,
    /// What the input is cast to before the pass (the weights' kind).
    kind: Kind,
    output: TensorSpec,
    name: String,
    batches: BatchObserver,
}

/// The inference thread's loop: gather a batch, run it, answer each caller. A batch waits for
/// more calls only while some request has announced one (`expected`) and the delay lasts. A
/// call whose request was given up on is dropped, whether found in the queue or while the
/// batch waited.
fn serve(
    pass: &Pass,
    mut staging: Staging,
    mut queue: mpsc::Receiver<Job>,
    expected: &Announced,
    tuning: Tuning,
    delay: Duration,
) {
    // Waiting for a batch to fill needs a timer; this thread has no other use for a runtime.
    let timer = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(timer) => timer,
        Err(e) => {
            tracing::error!(error = %e, "the inference thread cannot make a timer; batching waits for nothing");
            return serve_unbatched(pass, &mut staging, queue);
        }
    };
    let mut carried: Option<Job> = None;
    loop {
        let Some(mut first) = carried.take().or_else(|| queue.blocking_recv()) else { return };
        first.expected.settle();
        if first.progress.stage() == Stage::Abandoned {
            continue;
        }
        let deadline = first.enqueued + delay;
        let mut rows = first.input.dims[0] as usize;
        let mut batch = vec![first];
        while rows < tuning.max_batch {
            let next = match queue.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Empty)
                    if Instant::now() < deadline && expected.outstanding() > 0 =>
                {
                    // Until a call comes, the delay is over, or the last announced call is
                    // settled (then look again: the call may have come with it). The timer is
                    // made inside the runtime, which it needs.
                    let wait = async {
                        tokio::select! {
                            job = queue.recv() => Some(job),
                            () = expected.none_left.notified() => None,
                            () = tokio::time::sleep_until(deadline.into()) => Some(None),
                        }
                    };
                    match timer.block_on(wait) {
                        Some(job) => job,
                        None => continue,
                    }
                }
                Err(_) => None,
            };
            let Some(mut job) = next else { break };
            job.expected.settle();
            if job.progress.stage() == Stage::Abandoned {
                continue;
            }
            let n = job.input.dims[0] as usize;
            if rows + n > tuning.max_batch {
                carried = Some(job);
                break;
            }
            rows += n;
            batch.push(job);
        }
        start(pass, &mut staging, batch);
    }
}

/// Runs the calls of `batch` whose requests still want them (the claim is taken here, as the
/// pass starts: a request given up on while the batch gathered is left out).
fn start(pass: &Pass, staging: &mut Staging, mut batch: Vec<Job>) {
    batch.retain(|job| job.progress.start_forward());
    let rows = batch.iter().map(|job| job.input.dims[0] as usize).sum();
    if rows > 0 {
        run_batch(pass, staging, batch, rows);
    }
}

/// Runs each call alone.
fn serve_unbatched(pass: &Pass, staging: &mut Staging, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        start(pass, staging, vec![job]);
    }
}

/// Runs one forward pass over `batch` and answers each call; the histogram records its rows.
/// A panic in the pass fails the batch like any error: the thread keeps serving.
fn run_batch(pass: &Pass, staging: &mut Staging, batch: Vec<Job>, rows: usize) {
    let started = Instant::now();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward(pass, staging, &batch, rows)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                Err(BackendError::Torch(format!("the forward pass panicked: {what}")))
            });
    let inference = started.elapsed();
    match result {
        Ok((out_dims, data)) => {
            (pass.batches)(&pass.name, rows);
            let row_bytes = data.len() / rows.max(1);
            let mut offset = 0;
            for job in batch {
                let n = job.input.dims[0] as usize;
                let mut dims = out_dims.clone();
                dims[0] = n as u32;
                let output = Output {
                    dims,
                    data: data[offset..offset + n * row_bytes].to_vec(),
                    queue: started.duration_since(job.enqueued),
                    inference,
                    batch_rows: rows,
                };
                offset += n * row_bytes;
                let _ = job.reply.send(Ok(output));
            }
        }
        Err(_) if batch.len() > 1 => {
            // Only the call at fault may fail: run each alone.
            for job in batch {
                let rows = job.input.dims[0] as usize;
                run_batch(pass, staging, vec![job], rows);
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One forward pass over every job's rows, concatenated along the batch dimension; its output
/// checked to be `[rows, ...]` as the manifest says before any row is handed out.
fn forward(
    pass: &Pass,
    staging: &mut Staging,
    batch: &[Job],
    rows: usize,
) -> Result<(Vec<u32>, Vec<u8>), BackendError> {
    let device = pass.device;
    let input = staging.fill(batch, rows)?;
    // From page-locked memory the copy to the GPU runs asynchronously; the copy of the output
    // back below waits for it (same stream), so the buffer is free again when this returns.
    let input = if device.is_cuda() {
        input.f_to_device_(device, pass.kind, true, false).map_err(torch_err)?
    } else if pass.kind != Kind::Float {
        input.f_to_kind(pass.kind).map_err(torch_err)?
    } else {
        input
    };
    let output = pass.graph.forward(&input)?;
    check_output(&output.size(), rows, &pass.output).map_err(BackendError::Output)?;
    let output = output
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_contiguous())
        .map_err(torch_err)?;
    let dims: Vec<u32> = output.size().iter().map(|&d| d.max(0) as u32).collect();
    let numel = output.numel();
    let mut data = vec![0u8; numel * 4];
    output.f_copy_data_u8(&mut data, numel).map_err(torch_err)?;
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ModelRegistry;

    fn ignore_batches() -> BatchObserver {
        Arc::new(|_, _| {})
    }

    fn model(max_batch: usize, batch_delay: Duration) -> Arc<Model> {
        observed_model(max_batch, batch_delay, ignore_batches())
    }

    fn observed_model(max_batch: usize, batch_delay: Duration, batches: BatchObserver) -> Arc<Model> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let cpu = DeviceChoice { device: DeviceKind::Cpu, reason: "test".into() };
        let tuning = Tuning {
            threads: 1,
            max_queue: 64,
            max_batch,
            batch_delay: Some(batch_delay),
            precision: Precision::Fp32,
            optimise: true,
        };
        let registry = ModelRegistry::load_dir(&dir, &cpu, tuning, batches).unwrap();
        Arc::clone(registry.get("motion-resnet18").unwrap())
    }

    /// Runs every input as its own request, all announced at once so they may share batches;
    /// the answers in input order.
    async fn concurrently(model: &Arc<Model>, inputs: Vec<Input>) -> Vec<Result<Output, BackendError>> {
        let calls: Vec<_> = inputs
            .into_iter()
            .map(|input| {
                let model = Arc::clone(model);
                let mut expected = model.expect_call();
                tokio::spawn(
                    async move { model.infer(input, &mut expected, &Progress::new(Stage::Guest)).await },
                )
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    }

    /// A distinct input per `seed`.
    fn input(seed: u32) -> Input {
        let data = (0..8 * 112 * 112u32)
            .flat_map(|i| ((i.wrapping_mul(seed + 7) % 97) as f32 / 48.0 - 1.0).to_le_bytes())
            .collect();
        Input { dims: vec![1, 8, 112, 112], data }
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    #[test]
    fn the_optimised_forward_pass_answers_as_the_plain_one() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/motion-resnet18/model.pt");
        let optimised = Graph::load(&file, Device::Cpu, Kind::Float, true).unwrap();
        let plain = Graph::load(&file, Device::Cpu, Kind::Float, false).unwrap();
        assert!(matches!(optimised, Graph::Optimised(_)), "the model fell back to its plain module");
        assert!(matches!(plain, Graph::Plain(_)));
        // Bf16 is never optimised: the optimisation is for FP32 on the CPU.
        let bf16 = Graph::load(&file, Device::Cpu, Kind::BFloat16, true).unwrap();
        assert!(matches!(bf16, Graph::Plain(_)));

        let _no_grad = tch::no_grad_guard();
        for rows in [1, 5] {
            let input = Tensor::f_rand([rows, 8, 112, 112], (Kind::Float, Device::Cpu)).unwrap();
            let (a, b) = (optimised.forward(&input).unwrap(), plain.forward(&input).unwrap());
            assert_eq!(a.size(), [rows, 16]);
            assert_eq!(a.size(), b.size());
            let worst = f64::try_from((&a - &b).abs().max()).unwrap();
            let scale = f64::try_from(b.abs().max()).unwrap();
            assert!(worst <= 1e-4 * scale.max(1.0), "{rows} rows: off by {worst} (logits up to {scale})");
        }
    }

    #[test]
    fn concurrent_calls_share_a_forward_pass_and_get_their_own_rows() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let model = model(4, Duration::from_millis(300));
        let alone: Vec<Vec<f32>> = (0..6)
            .map(|seed| {
                floats(
                    &runtime
                        .block_on(model.infer(
                            input(seed),
                            &mut Expected::default(),
                            &Progress::new(Stage::Guest),
                        ))
                        .unwrap()
                        .data,
                )
            })
            .collect();

        let together: Vec<Output> = runtime
            .block_on(concurrently(&model, (0..6).map(input).collect()))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let batches: Vec<usize> = together.iter().map(|o| o.batch_rows).collect();
        assert!(batches.iter().all(|&rows| rows <= 4), "a batch exceeded 4 rows: {batches:?}");
        assert_eq!(batches.iter().max(), Some(&4), "six calls within the delay fill a batch: {batches:?}");
        for (seed, (output, expected)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(output.dims, vec![1, 16]);
            let got = floats(&output.data);
            let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "call {seed} got other rows than it would alone (off by {worst})");
        }
        // Distinct inputs give distinct logits, so a mix-up could not pass unnoticed.
        assert!(alone.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn at_bf16_the_weights_and_inputs_are_cast_and_the_logits_come_back_as_fp32() {
        // Model::load itself runs any precision (where it may is the registry's check), so the
        // cast is tested on every CPU, emulated where it has no bf16 instructions.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/motion-resnet18");
        let manifest = Manifest::read(&dir.join("model.toml")).unwrap();
        let cpu = DeviceChoice { device: DeviceKind::Cpu, reason: "test".into() };
        let at = |precision| {
            let tuning = Tuning {
                threads: 1,
                max_queue: 8,
                max_batch: 1,
                batch_delay: None,
                precision,
                optimise: true,
            };
            let model = Model::load(
                manifest.clone(),
                &dir.join("model.pt"),
                String::new(),
                &cpu,
                tuning,
                ignore_batches(),
            )
            .unwrap();
            assert_eq!(model.precision, precision);
            (0..3)
                .map(|seed| {
                    let output = runtime
                        .block_on(model.infer(
                            input(seed),
                            &mut model.expect_call(),
                            &Progress::new(Stage::Guest),
                        ))
                        .unwrap();
                    assert_eq!((output.dims.clone(), output.data.len()), (vec![1, 16], 16 * 4));
                    floats(&output.data)
                })
                .collect::<Vec<_>>()
        };
        let (fp32, bf16) = (at(Precision::Fp32), at(Precision::Bf16));
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        for (full, half) in fp32.iter().zip(&bf16) {
            assert_ne!(full, half, "bf16 gave fp32's exact logits: nothing was cast");
            let worst = full.iter().zip(half).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = full.iter().map(|a| a.abs()).fold(0.0f32, f32::max);
            assert!(worst < 0.05 * scale.max(1.0), "bf16 logits {half:?} are far from fp32's {full:?}");
            assert_eq!(argmax(full), argmax(half));
        }
    }

    /// A TorchScript model traced from `f` (input `[-1, 4, 2, 2]`, manifest output `[-1, 16]`),
    /// saved and loaded as the server loads one.
    fn traced(
        name: &str,
        mut f: impl FnMut(&Tensor) -> Tensor,
        max_batch: usize,
    ) -> Result<Arc<Model>, BackendError> {
        let dir = tempfile::tempdir().unwrap();
        let example = Tensor::zeros([2, 4, 2, 2], (Kind::Float, Device::Cpu));
        let mut forward = |inputs: &[Tensor]| vec![f(&inputs[0])];
        let class = name.replace('-', "_");
        let module = CModule::create_by_tracing(&class, "forward", &[example], &mut forward).unwrap();
        let file = dir.path().join("model.pt");
        module.save(&file).unwrap();
        let spec =
            |name: &str, shape: Vec<i64>| TensorSpec { name: name.into(), shape, dtype: "FP32".into() };
        let manifest = Manifest {
            name: name.into(),
            version: "1".into(),
            format: "torchscript".into(),
            file: "model.pt".into(),
            sha256: None,
            inputs: vec![spec("input", vec![-1, 4, 2, 2])],
            outputs: vec![spec("logits", vec![-1, 16])],
            preprocessing: "1.0".into(),
            description: None,
            provenance: None,
            evaluation: None,
        };
        let cpu = DeviceChoice { device: DeviceKind::Cpu, reason: "test".into() };
        let tuning = Tuning {
            threads: 1,
            max_queue: 8,
            max_batch,
            batch_delay: Some(Duration::from_millis(300)),
            precision: Precision::Fp32,
            optimise: true,
        };
        Model::load(manifest, &file, "test".into(), &cpu, tuning, ignore_batches()).map(Arc::new)
    }

    fn row(first: f32) -> Input {
        let values: Vec<f32> = (0..16).map(|i| if i == 0 { first } else { i as f32 }).collect();
        Input { dims: vec![1, 4, 2, 2], data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    #[test]
    fn a_model_whose_output_does_not_fit_its_manifest_is_refused_at_warm_up() {
        let cases: [(&str, Box<dyn FnMut(&Tensor) -> Tensor>, &str); 3] = [
            ("rank-zero", Box::new(|x| x.sum(Kind::Float)), "returned shape [] for 1 row(s)"),
            (
                "one-row",
                Box::new(|x| x.flatten(1, -1).narrow(0, 0, 1)),
                "returned shape [1, 16] for 4 row(s)",
            ),
            ("narrow", Box::new(|x| x.flatten(1, -1).narrow(1, 0, 8)), "returned shape [1, 8] for 1 row(s)"),
        ];
        for (name, f, words) in cases {
            let err = traced(name, f, 4).expect_err(name).to_string();
            assert!(err.contains("warm-up") && err.contains(words), "{name}: {err}");
            assert!(err.contains("'logits' is [-1, 16]"), "{name}: {err}");
        }
        traced("identity", |x| x.flatten(1, -1), 4).expect("a model that fits loads");
    }

    /// A model that passes warm-up but drops the rows whose first value is 1000 or more: a call
    /// with such a row fails, alone or in a batch, the others get their own rows, and the
    /// inference thread keeps serving.
    #[test]
    fn a_wrong_shape_fails_only_the_call_at_fault_and_the_thread_keeps_serving() {
        let drops_marked_rows = |x: &Tensor| {
            let flat = x.flatten(1, -1);
            let keep = flat.select(1, 0).lt(1000.0).nonzero().squeeze_dim(1);
            flat.index_select(0, &keep)
        };
        let model = traced("drops-marked-rows", drops_marked_rows, 4).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let alone = runtime
            .block_on(model.infer(row(1.0), &mut Expected::default(), &Progress::new(Stage::Guest)))
            .unwrap();
        assert_eq!(alone.dims, vec![1, 16]);
        let err = runtime
            .block_on(model.infer(row(5000.0), &mut Expected::default(), &Progress::new(Stage::Guest)))
            .unwrap_err();
        assert!(matches!(err, BackendError::Output(_)), "{err:?}");
        assert!(err.to_string().contains("returned shape [0, 16] for 1 row(s)"), "{err}");

        let answers =
            runtime.block_on(concurrently(&model, [2.0, 5000.0, 3.0].into_iter().map(row).collect()));
        assert!(matches!(answers[1], Err(BackendError::Output(_))), "{:?}", answers[1]);
        for (i, first) in [(0, 2.0), (2, 3.0)] {
            let output = answers[i].as_ref().unwrap();
            assert_eq!(floats(&output.data)[0], first, "call {i} got another call's row");
        }
        let after = runtime
            .block_on(model.infer(row(7.0), &mut Expected::default(), &Progress::new(Stage::Guest)))
            .unwrap();
        assert_eq!(floats(&after.data)[0], 7.0, "the thread serves after a bad batch");
    }

    #[test]
    fn a_call_given_up_on_before_its_forward_pass_never_runs() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let passes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&passes);
        let model = observed_model(
            4,
            Duration::from_secs(2),
            Arc::new(move |_, rows| seen.lock().unwrap().push(rows)),
        );
        // Another request is announced, so the batch that takes the first call waits for it.
        let announced = model.expect_call();
        let given_up = Progress::new(Stage::Guest);
        let first = {
            let (model, progress) = (Arc::clone(&model), given_up.clone());
            runtime.spawn(async move { model.infer(input(1), &mut model.expect_call(), &progress).await })
        };
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        assert_eq!(given_up.abandon(), Some(Stage::Queue));
        drop(announced);
        let second = runtime
            .block_on(model.infer(input(2), &mut model.expect_call(), &Progress::new(Stage::Guest)))
            .unwrap();
        assert_eq!(second.batch_rows, 1, "the abandoned call's row ran beside it");
        assert!(matches!(runtime.block_on(first).unwrap(), Err(BackendError::Stopped)));
        assert_eq!(*passes.lock().unwrap(), vec![1], "forward passes and their rows");
    }

    #[test]
    fn an_announcement_handed_over_stays_counted_and_none_becomes_one() {
        let model = model(16, Duration::from_millis(1));
        let outstanding = || model.expected.outstanding();
        let early = model.expect_call();
        assert_eq!(outstanding(), 1);
        let kept = model.take_announced(early);
        assert_eq!(outstanding(), 1, "handing an announcement over counted it twice or not at all");
        drop(kept);
        assert_eq!(outstanding(), 0);
        let made = model.take_announced(Expected::default());
        assert_eq!(outstanding(), 1, "a request announced nowhere is announced when it is handed over");
        drop(made);
        assert_eq!(outstanding(), 0);
    }

    #[test]
    fn a_batch_stops_waiting_when_the_call_it_waits_for_is_withdrawn() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let delay = Duration::from_secs(5);
        let model = model(16, delay);
        let withdrawn = model.expect_call();
        let withdraw = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(withdrawn);
        });
        let output = runtime
            .block_on(model.infer(input(1), &mut model.expect_call(), &Progress::new(Stage::Guest)))
            .unwrap();
        withdraw.join().unwrap();
        assert_eq!(output.batch_rows, 1);
        assert!(output.queue >= Duration::from_millis(250), "it did not wait: {:?}", output.queue);
        assert!(output.queue < delay / 2, "it waited {:?} for a call withdrawn after 300 ms", output.queue);
    }

    #[test]
    fn a_call_nobody_else_announced_does_not_wait_for_the_delay() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let delay = Duration::from_secs(2);
        let model = model(16, delay);
        let started = Instant::now();
        let mut expected = model.expect_call();
        let output =
            runtime.block_on(model.infer(input(1), &mut expected, &Progress::new(Stage::Guest))).unwrap();
        assert_eq!(output.batch_rows, 1);
        assert!(output.queue < delay / 4, "a lone call waited {:?} for company", output.queue);

        // Another request announced but not yet here: the batch waits for it, up to the delay.
        let _other = model.expect_call();
        let output = runtime
            .block_on(model.infer(input(2), &mut model.expect_call(), &Progress::new(Stage::Guest)))
            .unwrap();
        assert!(output.queue >= delay - Duration::from_millis(50), "waited only {:?}", output.queue);
        assert!(started.elapsed() < delay * 3);
    }
}
