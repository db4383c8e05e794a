//! The wasm component: exports `motion:guest/classifier` and calls the model through the
//! standard `wasi:nn` imports. Built only for wasm32; everything it calls is native-testable.

use crate::decode::{ACCEPTS, DecodeError, Limits, Media};
use crate::labels::LABELS;
use crate::postprocess::{softmax, top_k};
use crate::preprocess::{FRAMES, SIZE};
use crate::{INPUT_TENSOR, MODEL_NAME, OUTPUT_TENSOR};

wit_bindgen::generate!({
    world: "motion-guest",
    path: "../wit",
    generate_all,
});

use exports::motion::guest::classifier::Guest;
use motion::guest::types::{Classification, Error, GuestInfo, LabelScore, Request};
use wasi::nn::{graph, tensor};

struct MotionGuest;

/// This build's version; the `reversed` test variant says so.
const VERSION: &str = if cfg!(feature = "reversed") {
    concat!(env!("CARGO_PKG_VERSION"), "-reversed")
} else {
    env!("CARGO_PKG_VERSION")
};

impl Guest for MotionGuest {
    fn info() -> GuestInfo {
        GuestInfo {
            name: "motion".into(),
            version: VERSION.into(),
            model: MODEL_NAME.into(),
            input_shape: vec![-1, FRAMES as i64, i64::from(SIZE), i64::from(SIZE)],
            labels: LABELS
                .iter()
                .enumerate()
                .map(|(i, l)| if cfg!(feature = "test-duplicate-label") && i == 1 { LABELS[0] } else { l })
                .map(|l| l.to_string())
                .collect(),
            accepts: ACCEPTS.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn classify(req: Request) -> Result<Classification, Error> {
        if cfg!(feature = "test-failing-classify") {
            return Err(Error::Inference("this test build fails every classification".into()));
        }
        let media: Vec<Media> =
            req.media.iter().map(|m| Media { content_type: &m.content_type, data: &m.data }).collect();
        let prepared =
            crate::prepare(&media, &Limits::default(), cfg!(feature = "reversed")).map_err(decode_error)?;
        let (frames_total, frames_used) = (prepared.frames_total, prepared.frames_used);
        let logits = infer(&prepared.input)?;
        if logits.len() != LABELS.len() {
            return Err(Error::Inference(format!(
                "model returned {} logits; this guest names {}",
                logits.len(),
                LABELS.len()
            )));
        }
        let scores = softmax(&logits).map_err(Error::Inference)?;
        let k = (req.top_k as usize).clamp(1, LABELS.len());
        let top: Vec<LabelScore> = top_k(&scores, k)
            .into_iter()
            .map(|i| LabelScore { label: LABELS[i].to_string(), score: scores[i] })
            .collect();
        Ok(Classification {
            label: top[0].label.clone(),
            score: top[0].score,
            top_k: top,
            frames_total: u32::try_from(frames_total).unwrap_or(u32::MAX),
            frames_used: frames_used as u32,
        })
    }
}

fn decode_error(e: DecodeError) -> Error {
    match e {
        DecodeError::Unsupported(m) => Error::UnsupportedMedia(m),
        DecodeError::Malformed(m) => Error::BadInput(m),
    }
}

fn nn_error(what: &str, e: wasi::nn::errors::Error) -> Error {
    Error::Inference(format!("{what}: {:?}: {}", e.code(), e.data()))
}

/// Runs the model on one input `[1, 8, 112, 112]` and returns its 16 logits.
fn infer(input: &[f32]) -> Result<Vec<f32>, Error> {
    let graph = graph::load_by_name(MODEL_NAME).map_err(|e| nn_error("loading the model", e))?;
    let context = graph.init_execution_context().map_err(|e| nn_error("creating a context", e))?;
    let dims = [1, FRAMES as u32, SIZE, SIZE];
    let input = tensor::Tensor::new(&dims, tensor::TensorType::Fp32, le_bytes(input));
    let outputs = context
        .compute(vec![(INPUT_TENSOR.to_string(), input)])
        .map_err(|e| nn_error("running the model", e))?;
    let (_, logits) = outputs
        .into_iter()
        .find(|(name, _)| name == OUTPUT_TENSOR)
        .ok_or_else(|| Error::Inference(format!("model returned no '{OUTPUT_TENSOR}' tensor")))?;
    if logits.ty() != tensor::TensorType::Fp32 {
        return Err(Error::Inference(format!("'{OUTPUT_TENSOR}' is not FP32")));
    }
    let data = logits.data();
    if data.len() % 4 != 0 {
        return Err(Error::Inference(format!("'{OUTPUT_TENSOR}' has {} bytes, not whole f32s", data.len())));
    }
    Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

// wasi:nn tensors are little-endian, as wasm always is, so the values' memory is the tensor.
const _: () = assert!(cfg!(target_endian = "little"));

/// The bytes of `values` as they lie in memory: a view, not a copy.
fn le_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: the slice covers exactly the memory of `values`, which lives as long as it; an f32
    // has no padding and every byte is a valid u8.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

export!(MotionGuest);
