//! The model through `wasi:nn`, without its ceremony: load a model by the name the host
//! registered it under, hand it named tensors, read named tensors back.

use crate::bindings::wasi::nn::{errors, graph, tensor};
use crate::guest::Error;
use crate::{FRAMES, INPUT_TENSOR, OUTPUT_TENSOR, SIZE, le_bytes};

/// A model the host serves, loaded by name.
pub struct Model {
    name: String,
    graph: graph::Graph,
}

/// An FP32 tensor to hand to the model: its dimensions (the batch first) and values, row-major.
pub struct Tensor<'a> {
    pub dims: Vec<u32>,
    pub data: &'a [f32],
}

/// The model's named output tensors.
pub struct Outputs(Vec<(String, tensor::Tensor)>);

fn nn_error(what: &str, e: errors::Error) -> Error {
    Error::Inference(format!("{what}: {:?}: {}", e.code(), e.data()))
}

/// Rows in one `compute` call: 12.8 MB of input, within the host's default 32 MiB a call
/// (`--guest-max-transfer-bytes`) and its 64 rows a call.
pub const ROWS_PER_CALL: usize = 32;

impl Model {
    /// Loads the model the host registered as `name` (`wasi:nn/graph.load-by-name`).
    pub fn load(name: &str) -> Result<Model, Error> {
        let graph = graph::load_by_name(name).map_err(|e| nn_error(&format!("loading model '{name}'"), e))?;
        Ok(Model { name: name.to_string(), graph })
    }

    /// Runs the model on named input tensors and returns its named outputs. The host batches
    /// calls from concurrent requests; a tensor's first dimension may hold several rows of this
    /// request too.
    pub fn compute(&self, inputs: &[(&str, Tensor)]) -> Result<Outputs, Error> {
        let context = self
            .graph
            .init_execution_context()
            .map_err(|e| nn_error(&format!("creating a context for '{}'", self.name), e))?;
        let tensors = inputs
            .iter()
            .map(|(name, t)| {
                let expected: usize = t.dims.iter().map(|&d| d as usize).product();
                if expected != t.data.len() {
                    return Err(Error::Inference(format!(
                        "tensor '{name}' has {} values; its dimensions {:?} hold {expected}",
                        t.data.len(),
                        t.dims
                    )));
                }
                Ok((
                    name.to_string(),
                    tensor::Tensor::new(&t.dims, tensor::TensorType::Fp32, le_bytes(t.data)),
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs =
            context.compute(tensors).map_err(|e| nn_error(&format!("running model '{}'", self.name), e))?;
        Ok(Outputs(outputs))
    }

    /// Runs the contract's model on `rows` inputs of `8 × 112 × 112` values each, laid end to
    /// end in `input` (from [`Clip::planes`](crate::Clip::planes)), and returns each row's logits:
    /// [`ROWS_PER_CALL`] rows a `compute` call, each call one forward pass in the host.
    pub fn run_rows(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, Error> {
        let row = FRAMES * (SIZE * SIZE) as usize;
        if input.is_empty() || !input.len().is_multiple_of(row) {
            return Err(Error::Inference(format!(
                "the input has {} values, not a whole number of rows of {row}",
                input.len()
            )));
        }
        let mut logits = Vec::with_capacity(input.len() / row);
        for chunk in input.chunks(ROWS_PER_CALL * row) {
            logits.extend(self.run_call(chunk, row)?);
        }
        Ok(logits)
    }

    fn run_call(&self, input: &[f32], row: usize) -> Result<Vec<Vec<f32>>, Error> {
        let rows = (input.len() / row) as u32;
        let dims = vec![rows, FRAMES as u32, SIZE, SIZE];
        let logits = self.compute(&[(INPUT_TENSOR, Tensor { dims, data: input })])?.f32(OUTPUT_TENSOR)?;
        if logits.len() % rows as usize != 0 {
            return Err(Error::Inference(format!(
                "'{OUTPUT_TENSOR}' has {} values for {rows} rows",
                logits.len()
            )));
        }
        Ok(logits.chunks_exact(logits.len() / rows as usize).map(<[f32]>::to_vec).collect())
    }

    /// Runs the contract's model on one input of `8 × 112 × 112` values and returns its logits.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, Error> {
        let mut rows = self.run_rows(input)?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(Error::Inference(format!("the input holds {n} rows; run takes one (see run_rows)"))),
        }
    }
}

impl Outputs {
    /// The FP32 values of the output tensor `name`.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        let (_, t) = self
            .0
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Inference(format!("the model returned no '{name}' tensor")))?;
        if t.ty() != tensor::TensorType::Fp32 {
            return Err(Error::Inference(format!("'{name}' is {:?}, not FP32", t.ty())));
        }
        let data = t.data();
        if data.len() % 4 != 0 {
            return Err(Error::Inference(format!("'{name}' has {} bytes, not whole f32s", data.len())));
        }
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The dimensions of the output tensor `name`.
    pub fn dims(&self, name: &str) -> Option<Vec<u32>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t.dimensions())
    }
}
