//! The host's `wasi:nn` (0.2.0-rc-2024-10-28) over the model registry: graphs are the models of
//! the [`ModelRegistry`], found with `load-by-name`; `compute` checks the tensor against the
//! model and awaits the model's inference thread without blocking a tokio worker. Each call
//! records when it ran, which splits a request's time into preprocess, queue, inference and
//! postprocess, and counts against the request's [`Caps`].
//!
//! Like wasmtime-wasi-nn, this crate owns its bindings and its context: an embedder keeps an
//! [`NnCtx`] per store beside its resource table and adds the interfaces to its linker with
//! [`add_to_linker`], handing out an [`NnView`] of the two. A world that imports `wasi:nn`
//! reuses [`bindings`] (`with: { "wasi:nn": motion_nn::bindings::wasi::nn }`).
//!
//! A guest that goes past a cap, or whose call finds the model's queue full, traps with a typed
//! error ([`CapExceeded`], [`ModelBusy`]) that the embedder downcasts; every other refusal is a
//! `wasi:nn` error the guest can read. Loading a graph from bytes (`load`) is refused: a guest
//! uses the models the host serves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use bindings::wasi::nn::{errors, graph, inference, tensor};
use motion_model::{BackendError, Expected, Model, ModelRegistry, Progress, Stage};

use errors::ErrorCode;
use tensor::TensorType;

/// Host bindings of the vendored standard `wasi:nn` WIT, generated at build time.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/deps/wasi-nn",
        imports: { default: async | trappable },
        with: {
            "wasi:nn/graph.graph": crate::GraphResource,
            "wasi:nn/inference.graph-execution-context": crate::ContextResource,
            "wasi:nn/tensor.tensor": crate::TensorResource,
            "wasi:nn/errors.error": crate::ErrorResource,
        },
    });
}

/// A `wasi:nn` graph: a handle on a loaded model.
pub struct GraphResource(Arc<Model>);
/// A `wasi:nn` execution context on a model.
pub struct ContextResource(Arc<Model>);
/// A `wasi:nn` tensor held by the host.
pub struct TensorResource {
    dims: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}
/// A `wasi:nn` error: its code and a message for the guest.
pub struct ErrorResource {
    code: ErrorCode,
    data: String,
}

/// What one store's guest may do through `wasi:nn`.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Calls, drops not counted (`--guest-max-nn-calls`).
    pub calls: u32,
    /// Tensor bytes handed in (`--guest-max-nn-bytes`).
    pub tensor_bytes: usize,
}

/// What the `wasi:nn` calls of one store did, read by the embedder when the guest returns.
#[derive(Debug, Default, Clone)]
pub struct Activity {
    pub first_compute: Option<Instant>,
    pub last_compute_end: Option<Instant>,
    pub queue: Duration,
    pub inference: Duration,
    pub computes: u32,
    /// Rows in the largest forward pass its computes ran in (other requests' rows included).
    pub batch_rows: usize,
    /// Calls made, drops not counted.
    pub calls: u32,
    /// Tensor bytes handed in.
    pub tensor_bytes: usize,
}

/// A guest went past one of its [`Caps`]; it traps the guest. `cap` is the cap's short name (a
/// metrics label), `message` names the cap and its flag.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CapExceeded {
    pub cap: &'static str,
    pub message: String,
}

/// A compute found the model's queue full; it traps the guest, so the request can be answered
/// "busy, retry" at once instead of as the guest's failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelBusy(pub String);

/// The `wasi:nn` state of one store.
pub struct NnCtx {
    models: Arc<ModelRegistry>,
    caps: Caps,
    /// The store's announced model call, settled when the inference thread takes it.
    expected: Expected,
    /// The request's stage: queued and in inference while a compute waits for the model.
    progress: Progress,
    /// What the store holds until its guest first waits for a model (a core to run on), then
    /// lets go of.
    held_until_compute: Option<Box<dyn Send>>,
    activity: Activity,
}

impl NnCtx {
    /// A context over `models` within `caps`; `expected` is the request's announced model call
    /// (batches being gathered wait for it), or `Expected::default()` for none; `progress` is
    /// the request's stage, which a compute moves to the queue and back.
    pub fn new(models: Arc<ModelRegistry>, caps: Caps, expected: Expected, progress: Progress) -> NnCtx {
        NnCtx { models, caps, expected, progress, held_until_compute: None, activity: Activity::default() }
    }

    /// Keeps `held` until the guest first calls `compute`, and drops it before the call waits
    /// for the model (or when the store goes, if it never calls).
    pub fn hold_until_compute(&mut self, held: impl Send + 'static) {
        self.held_until_compute = Some(Box::new(held));
    }

    pub fn activity(&self) -> &Activity {
        &self.activity
    }
}

/// What the `wasi:nn` host functions run on: a store's [`NnCtx`] and its resource table.
pub struct NnView<'a> {
    pub ctx: &'a mut NnCtx,
    pub table: &'a mut ResourceTable,
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Adds the four `wasi:nn` interfaces to `linker`; `view` finds a store's [`NnView`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    tensor::add_to_linker::<T, HasNn>(linker, view)?;
    errors::add_to_linker::<T, HasNn>(linker, view)?;
    inference::add_to_linker::<T, HasNn>(linker, view)?;
    graph::add_to_linker::<T, HasNn>(linker, view)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<ErrorResource>>>;

impl NnView<'_> {
    /// Counts one wasi:nn call against the request's limit; past it the guest traps.
    fn count_call(&mut self) -> wasmtime::Result<()> {
        self.ctx.activity.calls += 1;
        if self.ctx.activity.calls > self.ctx.caps.calls {
            let limit = self.ctx.caps.calls;
            let message = format!("it made more than {limit} wasi:nn calls (--guest-max-nn-calls)");
            return Err(CapExceeded { cap: "nn_calls", message }.into());
        }
        Ok(())
    }

    fn nn_error<T>(&mut self, code: ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let error = self.table.push(ErrorResource { code, data: data.into() })?;
        Ok(Err(error))
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<GraphResource>> {
        self.count_call()?;
        self.nn_error(ErrorCode::UnsupportedOperation, "this host serves its own models: use load-by-name")
    }

    async fn load_by_name(&mut self, name: String) -> NnResult<Resource<GraphResource>> {
        self.count_call()?;
        match self.ctx.models.get(&name) {
            Some(model) => {
                let model = Arc::clone(model);
                Ok(Ok(self.table.push(GraphResource(model))?))
            }
            None => {
                let known = self.ctx.models.names().join(", ");
                self.nn_error(ErrorCode::NotFound, format!("no model named '{name:.128}' (loaded: {known})"))
            }
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(
        &mut self,
        graph: Resource<GraphResource>,
    ) -> NnResult<Resource<ContextResource>> {
        self.count_call()?;
        let model = Arc::clone(&self.table.get(&graph)?.0);
        Ok(Ok(self.table.push(ContextResource(model))?))
    }

    async fn drop(&mut self, graph: Resource<GraphResource>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ContextResource>,
        inputs: Vec<(String, Resource<TensorResource>)>,
    ) -> NnResult<Vec<(String, Resource<TensorResource>)>> {
        self.count_call()?;
        let started = Instant::now();
        self.ctx.activity.first_compute.get_or_insert(started);
        let model = Arc::clone(&self.table.get(&context)?.0);
        let expected = model.manifest.input().name.clone();

        let mut chosen = None;
        for (name, tensor) in inputs {
            let tensor = self.table.delete(tensor)?;
            if name == expected && chosen.is_none() {
                chosen = Some(tensor);
            } else {
                let msg =
                    format!("model '{}' takes one input named '{expected}', not '{name:.128}'", model.name());
                return self.nn_error(ErrorCode::InvalidArgument, msg);
            }
        }
        let Some(tensor) = chosen else {
            return self.nn_error(ErrorCode::InvalidArgument, format!("input '{expected}' is missing"));
        };
        if let Err(e) = model.check_input(&tensor.dims, tensor.ty == TensorType::Fp32, tensor.data.len()) {
            return self.nn_error(ErrorCode::InvalidArgument, e.to_string());
        }

        let input = motion_model::Input { dims: tensor.dims, data: tensor.data };
        self.ctx.held_until_compute = None;
        let result = model.infer(input, &mut self.ctx.expected, &self.ctx.progress).await;
        self.ctx.progress.enter(Stage::Guest);
        self.ctx.activity.last_compute_end = Some(Instant::now());
        self.ctx.activity.computes += 1;
        match result {
            Ok(output) => {
                self.ctx.activity.queue += output.queue;
                self.ctx.activity.inference += output.inference;
                self.ctx.activity.batch_rows = self.ctx.activity.batch_rows.max(output.batch_rows);
                let name = model.manifest.output().name.clone();
                let tensor = self.table.push(TensorResource {
                    dims: output.dims,
                    ty: TensorType::Fp32,
                    data: output.data,
                })?;
                Ok(Ok(vec![(name, tensor)]))
            }
            Err(e @ BackendError::Busy(_)) => Err(ModelBusy(e.to_string()).into()),
            Err(e) => {
                let code = match e {
                    BackendError::InvalidInput(_) => ErrorCode::InvalidArgument,
                    _ => ErrorCode::RuntimeError,
                };
                self.nn_error(code, e.to_string())
            }
        }
    }

    async fn drop(&mut self, context: Resource<ContextResource>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<TensorResource>> {
        self.count_call()?;
        self.ctx.activity.tensor_bytes = self.ctx.activity.tensor_bytes.saturating_add(data.len());
        if self.ctx.activity.tensor_bytes > self.ctx.caps.tensor_bytes {
            let limit = self.ctx.caps.tensor_bytes;
            let message =
                format!("it handed more than {limit} bytes of tensors to wasi:nn (--guest-max-nn-bytes)");
            return Err(CapExceeded { cap: "nn_bytes", message }.into());
        }
        Ok(self.table.push(TensorResource { dims: dimensions, ty, data })?)
    }

    async fn dimensions(&mut self, tensor: Resource<TensorResource>) -> wasmtime::Result<Vec<u32>> {
        self.count_call()?;
        Ok(self.table.get(&tensor)?.dims.clone())
    }

    async fn ty(&mut self, tensor: Resource<TensorResource>) -> wasmtime::Result<TensorType> {
        self.count_call()?;
        Ok(self.table.get(&tensor)?.ty)
    }

    async fn data(&mut self, tensor: Resource<TensorResource>) -> wasmtime::Result<Vec<u8>> {
        self.count_call()?;
        Ok(self.table.get(&tensor)?.data.clone())
    }

    async fn drop(&mut self, tensor: Resource<TensorResource>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, error: Resource<ErrorResource>) -> wasmtime::Result<ErrorCode> {
        self.count_call()?;
        Ok(self.table.get(&error)?.code)
    }

    async fn data(&mut self, error: Resource<ErrorResource>) -> wasmtime::Result<String> {
        self.count_call()?;
        Ok(self.table.get(&error)?.data.clone())
    }

    async fn drop(&mut self, error: Resource<ErrorResource>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}
