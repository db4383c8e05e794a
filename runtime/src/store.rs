//! One request's [`Store`]: an empty WASI context (clocks, random numbers and captured
//! stdout/stderr only), the `wasi:nn` context, the limiter, the hostcall fuel that caps what
//! the guest passes the host in one call, and an epoch deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::limits::{DeadlineExceeded, Limiter, Limits};
use crate::output::GuestOutput;
use motion_model::{Expected, ModelRegistry, Progress};
use motion_nn::{Activity, Caps, NnCtx, NnView};

/// Most bytes of a guest's stdout and stderr kept per request.
const GUEST_OUTPUT_BYTES: usize = 16 * 1024;
/// Entries of the host's resource table one request may hold at once (WASI streams and
/// pollables, wasi:nn graphs, contexts, tensors and errors).
const MAX_HOST_RESOURCES: usize = 1024;
/// Handles of its own resources a guest may hold at once.
const MAX_GUEST_HANDLES: usize = 10_000;

/// Stores alive in this process: each holds a pooled instance slot until it is dropped.
static OPEN_STORES: AtomicUsize = AtomicUsize::new(0);

/// How many guest stores are alive now (requests running a guest, validations).
pub fn open_stores() -> usize {
    OPEN_STORES.load(Ordering::Relaxed)
}

/// Counts a store as open while it lives.
struct Open;

impl Open {
    fn new() -> Open {
        OPEN_STORES.fetch_add(1, Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN_STORES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The data of one request's [`Store`].
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) nn: NnCtx,
    limiter: Limiter,
    stdout: GuestOutput,
    stderr: GuestOutput,
    _open: Open,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    pub(crate) fn nn(&self) -> &Activity {
        self.nn.activity()
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn nn_view(&mut self) -> NnView<'_> {
        NnView { ctx: &mut self.nn, table: &mut self.table }
    }
}

/// Adds what a guest may import to `linker`: WASI (its context is empty) and `wasi:nn`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    motion_nn::add_to_linker(linker, State::nn_view)
}

/// A fresh store for one guest call that must end by `deadline`; `expected` is the request's
/// announced model call, `progress` its stage.
pub(crate) fn new_store(
    engine: &Engine,
    models: &Arc<ModelRegistry>,
    limits: &Limits,
    deadline: Instant,
    expected: Expected,
    progress: Progress,
) -> Store<State> {
    let stdout = GuestOutput::new(GUEST_OUTPUT_BYTES);
    let stderr = GuestOutput::new(GUEST_OUTPUT_BYTES);
    let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_RESOURCES);
    let caps = Caps { calls: limits.nn_calls, tensor_bytes: limits.nn_bytes };
    let state = State {
        wasi,
        table,
        nn: NnCtx::new(Arc::clone(models), caps, expected, progress),
        limiter: Limiter::new(limits),
        stdout,
        stderr,
        _open: Open::new(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(limits.transfer_bytes);
    store.set_max_component_handles(MAX_GUEST_HANDLES);
    // Check the deadline every tick and yield to the scheduler in between, so a spinning
    // guest neither outlives its deadline nor holds a tokio worker.
    store.set_epoch_deadline(1);
    let nice = limits.nice;
    store.call_hook(move |_, hook| {
        if hook.exiting_host() {
            crate::cpu::lower_this_thread(nice);
        }
        Ok(())
    });
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline { Err(DeadlineExceeded.into()) } else { Ok(UpdateDeadline::Yield(1)) }
    });
    store
}

/// Copies what the guest wrote to stdout and stderr into the host log, tagged with the
/// guest's name (at most [`GUEST_OUTPUT_BYTES`] of each per request; the rest is counted).
pub(crate) fn log_guest_output(guest: &str, store: &Store<State>) {
    for (stream, pipe) in [("stdout", &store.data().stdout), ("stderr", &store.data().stderr)] {
        let (bytes, dropped) = pipe.contents();
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(&bytes);
            tracing::info!(guest, stream, output = %text.trim_end(), dropped_bytes = dropped, "guest output");
        }
    }
}
