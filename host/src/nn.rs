//! The host's `wasi:nn` (0.2.0-rc-2024-10-28): graphs are the models of the
//! [`ModelRegistry`](motion_model::ModelRegistry), found with `load-by-name`; `compute` checks
//! the tensor against the model and awaits the model's inference thread without blocking a
//! tokio worker. Each call records when it ran, which splits a request's time into
//! preprocess, queue, inference and postprocess.
//!
//! Loading a graph from bytes (`load`) is refused: a guest uses the models the host serves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use crate::runtime::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::runtime::{LimitExceeded, State};
use motion_model::{BackendError, Model};

use errors::ErrorCode;
use tensor::TensorType;

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

/// What the wasi:nn calls of one request did, read by the runtime when the guest returns.
#[derive(Debug, Default, Clone)]
pub struct NnActivity {
    pub first_compute: Option<Instant>,
    pub last_compute_end: Option<Instant>,
    pub queue: Duration,
    pub inference: Duration,
    pub computes: u32,
    pub batch_rows: usize,
    /// Calls made, drops not counted.
    pub calls: u32,
    /// Tensor bytes handed in.
    pub tensor_bytes: usize,
    /// Why a compute was turned away because the model's queue was full.
    pub busy: Option<String>,
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<ErrorResource>>>;

impl State {
    /// Counts one wasi:nn call against the request's limit; past it the guest traps.
    fn count_call(&mut self) -> wasmtime::Result<()> {
        self.nn.calls += 1;
        if self.nn.calls > self.nn_calls {
            let limit = self.nn_calls;
            return Err(LimitExceeded(
                "nn_calls",
                format!("it made more than {limit} wasi:nn calls (--guest-max-nn-calls)"),
            )
            .into());
        }
        Ok(())
    }

    fn nn_error<T>(&mut self, code: ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let error = self.table.push(ErrorResource { code, data: data.into() })?;
        Ok(Err(error))
    }
}

impl graph::Host for State {
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
        match self.models.get(&name) {
            Some(model) => {
                let model = Arc::clone(model);
                Ok(Ok(self.table.push(GraphResource(model))?))
            }
            None => {
                let known = self.models.names().join(", ");
                self.nn_error(ErrorCode::NotFound, format!("no model named '{name:.128}' (loaded: {known})"))
            }
        }
    }
}

impl graph::HostGraph for State {
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

impl inference::Host for State {}

impl inference::HostGraphExecutionContext for State {
    async fn compute(
        &mut self,
        context: Resource<ContextResource>,
        inputs: Vec<(String, Resource<TensorResource>)>,
    ) -> NnResult<Vec<(String, Resource<TensorResource>)>> {
        self.count_call()?;
        let started = Instant::now();
        self.nn.first_compute.get_or_insert(started);
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
        let result = model.infer(input, &mut self.expected).await;
        self.nn.last_compute_end = Some(Instant::now());
        self.nn.computes += 1;
        match result {
            Ok(output) => {
                self.nn.queue += output.queue;
                self.nn.inference += output.inference;
                self.nn.batch_rows = self.nn.batch_rows.max(output.batch_rows);
                let name = model.manifest.output().name.clone();
                let tensor = self.table.push(TensorResource {
                    dims: output.dims,
                    ty: TensorType::Fp32,
                    data: output.data,
                })?;
                Ok(Ok(vec![(name, tensor)]))
            }
            Err(e) => {
                if let BackendError::Busy(_) = e {
                    self.nn.busy = Some(e.to_string());
                }
                let code = match e {
                    BackendError::InvalidInput(_) => ErrorCode::InvalidArgument,
                    BackendError::Busy(_) => ErrorCode::Timeout,
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

impl tensor::Host for State {}

impl tensor::HostTensor for State {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<TensorResource>> {
        self.count_call()?;
        self.nn.tensor_bytes = self.nn.tensor_bytes.saturating_add(data.len());
        if self.nn.tensor_bytes > self.nn_bytes {
            let limit = self.nn_bytes;
            return Err(LimitExceeded(
                "nn_bytes",
                format!("it handed more than {limit} bytes of tensors to wasi:nn (--guest-max-nn-bytes)"),
            )
            .into());
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

impl errors::Host for State {}

impl errors::HostError for State {
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
