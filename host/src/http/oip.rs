//! The Open Inference Protocol (KServe v2) over REST, as Triton and KServe serve it, so their
//! clients, probes and dashboards work unchanged.
//!
//! Two models are visible. Each model in the registry is served raw (`motion-resnet18`: FP32
//! `[-1,8,112,112]` in, FP32 logits out), through the same batcher as the guests' calls. The
//! guest pipeline is `motion-classifier`: a BYTES input `media` of encoded clips or frames in,
//! the best `label` (BYTES) and every label's `scores` (FP32, in the guest's label order) out,
//! run by the default guest. JSON tensors and the binary tensor data extension are both
//! spoken; errors are `{"error": "…"}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::json;

use super::access::AccessInfo;
use super::oip_codec::{self as wire, OutputData, WireError};
use super::work::{self, Work};
use super::{ApiError, AppState, VERSION};
use crate::service::{GuestChoice, Phase, Service, ServiceError};
use motion_model::{Input, Model, Progress};
use motion_runtime::{LoadedGuest, Media, Routed, Segmentation, StageTimings, media};

/// The guest pipeline's model name.
pub const PIPELINE: &str = "motion-classifier";
/// Its input and outputs.
const MEDIA: &str = "media";
const LABEL: &str = "label";
const SCORES: &str = "scores";
/// The timeline, when the request's parameters ask for one: a row per window, its start and
/// end frame, start and end second (NaN for untimed media), then its score for each label.
const SEGMENTS: &str = "segments";
/// The best label of each window.
const SEGMENT_LABELS: &str = "segment_labels";
/// Columns of a `segments` row before the scores.
const SEGMENT_COLUMNS: usize = 4;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}", get(metadata_at))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_at))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_at))
}

/// An error in the protocol's shape: `{"error": "…"}`. The protocol has no 415 or 422: media
/// the model cannot read is a bad request.
#[derive(Debug)]
pub struct V2Error(pub ApiError);

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        V2Error(e)
    }
}

impl From<ServiceError> for V2Error {
    fn from(e: ServiceError) -> Self {
        V2Error(e.into())
    }
}

impl From<WireError> for V2Error {
    fn from(e: WireError) -> Self {
        V2Error(ApiError::bad_request(e.0))
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = match e.status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        let response = (status, axum::Json(json!({ "error": e.message }))).into_response();
        e.finish(response)
    }
}

async fn server_metadata() -> Response {
    axum::Json(json!({"name": "motion-host", "version": VERSION, "extensions": ["binary_tensor_data"]}))
        .into_response()
}

async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

async fn ready(State(app): State<Arc<AppState>>) -> Result<Response, V2Error> {
    if app.service.phase() != Phase::Healthy {
        app.service.guests()?;
        return Err(ApiError::not_ready("the server is shutting down").into());
    }
    Ok(axum::Json(json!({"ready": true})).into_response())
}

/// What a model name resolves to.
enum Target {
    Raw(Arc<Model>),
    Pipeline(Arc<LoadedGuest>),
}

impl Target {
    fn version(&self) -> &str {
        match self {
            Target::Raw(model) => &model.manifest.version,
            Target::Pipeline(guest) => &guest.info.version,
        }
    }
}

/// Finds `name` (at `version`, when given) among the served models.
fn resolve(service: &Service, name: &str, version: Option<&str>) -> Result<Target, V2Error> {
    let target = if name == PIPELINE {
        Target::Pipeline(service.guest(GuestChoice::Default)?)
    } else if let Some(model) = service.model(name)? {
        Target::Raw(model)
    } else {
        let mut served: Vec<String> = service.models()?.iter().map(|m| m.name().to_string()).collect();
        served.push(PIPELINE.to_string());
        return Err(ApiError::not_found(format!(
            "Request for unknown model: '{name:.64}' is not found (served: {})",
            served.join(", ")
        ))
        .into());
    };
    match version {
        Some(v) if v != target.version() => Err(ApiError::not_found(format!(
            "model '{name}' has no version '{v:.64}' (serving version '{}')",
            target.version()
        ))
        .into()),
        _ => Ok(target),
    }
}

fn model_metadata(name: &str, target: &Target) -> serde_json::Value {
    let tensor = |name: &str, datatype: &str, shape: &[i64]| json!({"name": name, "datatype": datatype, "shape": shape});
    match target {
        Target::Raw(model) => {
            let m = &model.manifest;
            json!({
                "name": name,
                "versions": [m.version],
                "platform": "pytorch_torchscript",
                "inputs": m.inputs.iter().map(|t| tensor(&t.name, &t.dtype, &t.shape)).collect::<Vec<_>>(),
                "outputs": m.outputs.iter().map(|t| tensor(&t.name, &t.dtype, &t.shape)).collect::<Vec<_>>(),
                "parameters": {"device": model.device.to_string(), "precision": model.precision.name()},
            })
        }
        Target::Pipeline(guest) => json!({
            "name": name,
            "versions": [guest.info.version],
            "platform": "wasm_component",
            "inputs": [tensor(MEDIA, "BYTES", &[-1])],
            "outputs": [
                tensor(LABEL, "BYTES", &[1]),
                tensor(SCORES, "FP32", &[1, guest.info.labels.len() as i64]),
                tensor(SEGMENTS, "FP32", &[-1, (SEGMENT_COLUMNS + guest.info.labels.len()) as i64]),
                tensor(SEGMENT_LABELS, "BYTES", &[-1]),
            ],
            "parameters": {
                "labels": guest.info.labels.join(","),
                "guest": guest.name,
                "model": guest.model.name(),
                "device": guest.model.device.to_string(),
                "precision": guest.model.precision.name(),
            },
        }),
    }
}

async fn metadata(State(app): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, V2Error> {
    let target = resolve(&app.service, &model, None)?;
    Ok(axum::Json(model_metadata(&model, &target)).into_response())
}

async fn metadata_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let target = resolve(&app.service, &model, Some(&version))?;
    Ok(axum::Json(model_metadata(&model, &target)).into_response())
}

async fn model_ready(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, V2Error> {
    resolve(&app.service, &model, None)?;
    Ok(axum::Json(json!({"name": model, "ready": true})).into_response())
}

async fn model_ready_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    resolve(&app.service, &model, Some(&version))?;
    Ok(axum::Json(json!({"name": model, "ready": true})).into_response())
}

async fn infer(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V2Error> {
    serve_infer(&app, &model, None, headers, body).await
}

async fn infer_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V2Error> {
    serve_infer(&app, &model, Some(&version), headers, body).await
}

/// Reads the body, takes an in-flight slot and runs the request, all within its deadline, as
/// `/v1/classify` does (the `timeout` parameter can tighten it). The Content-Type is not read:
/// Triton's clients send none.
async fn serve_infer(
    app: &AppState,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V2Error> {
    let work = Work::start();
    let answer = infer_within_deadline(app, &work, model, version, headers, body).await;
    work.finish();
    answer
}

async fn infer_within_deadline(
    app: &AppState,
    work: &Work,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V2Error> {
    let received = Instant::now();
    let (deadline, asked) = app.deadline(received).asked_by(received, &headers);
    let upload = app.read_body(&headers, body, &deadline).await.inspect_err(|e| work.body_failed(e))?;
    asked?;
    let _slot = app.admit()?;
    let bytes = upload.bytes;
    let header_length = match headers.get(wire::HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str().map_err(|_| WireError("Inference-Header-Content-Length is not a number".into()))?,
        ),
        None => None,
    };
    let parse_started = Instant::now();
    let request = wire::parse_request(&bytes, header_length)?;
    let parsing = parse_started.elapsed();
    drop(bytes);
    let own = work::parameter_timeout(request.parameters.get("timeout"))?;
    let deadline = deadline.tightened(received, own, work::Source::Parameter);
    let mut served_by = None;
    let run = async {
        let target = resolve(&app.service, model, version)?;
        let progress = work.progress();
        // The version that answers: a canary's may differ from the live one's.
        let mut served_version = target.version().to_string();
        let (outputs, info) = match &target {
            Target::Raw(m) => run_model(&app.service, m, &request, progress).await?,
            Target::Pipeline(_) => {
                let routed = app.service.route(GuestChoice::Default, super::v1::pinned_digest(&headers)?)?;
                served_by = Some(routed.guest.digest.clone());
                served_version.clone_from(&routed.guest.info.version);
                run_pipeline(&app.service, &routed, &request, progress).await?
            }
        };
        let encode_started = Instant::now();
        let selected = wire::select(outputs, &request)?;
        let encoded = wire::encode_response(model, &served_version, request.id.as_deref(), &selected);
        let mut response = match encoded.header_length {
            Some(n) => (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
                    (header::HeaderName::from_static(wire::HEADER_LENGTH), HeaderValue::from(n)),
                ],
                encoded.body,
            )
                .into_response(),
            None => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], encoded.body)
                .into_response(),
        };
        // Parsing the request is preprocessing too, and encoding the answer postprocessing.
        let mut info = info;
        info.timings.preprocess += parsing;
        info.timings.postprocess += encode_started.elapsed();
        response.extensions_mut().insert(info);
        Ok::<_, V2Error>(response)
    };
    let answer = work.within(&deadline, run).await;
    match served_by {
        Some(digest) => Ok(super::v1::served_by(answer.unwrap_or_else(IntoResponse::into_response), &digest)),
        None => answer,
    }
}

/// Runs the raw network on the request's one input tensor.
async fn run_model(
    service: &Service,
    model: &Model,
    request: &wire::Request,
    progress: &Progress,
) -> Result<(Vec<wire::Output>, AccessInfo), V2Error> {
    let started = Instant::now();
    let spec = model.manifest.input();
    request.only_inputs(&[spec.name.as_str()])?;
    let input = request.input(&spec.name)?;
    let data = input.fp32_bytes()?;
    let dims: Vec<u32> =
        input.shape.iter().map(|&d| u32::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
            WireError(format!("input '{}' has a dimension too large: {:?}", input.name, input.shape))
        })?;
    let decoded = started.elapsed();
    let output = service.infer(model, Input { dims, data }, progress).await.map_err(ApiError::from)?;
    let floats = output.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let out_spec = model.manifest.output();
    let outputs = vec![wire::Output {
        name: out_spec.name.clone(),
        shape: output.dims.iter().map(|&d| u64::from(d)).collect(),
        data: OutputData::Fp32(floats),
    }];
    let info = AccessInfo {
        model: model.name().to_string(),
        guest: None,
        batch_size: output.batch_rows,
        timings: StageTimings {
            instantiate: Duration::ZERO,
            preprocess: decoded,
            queue: output.queue,
            inference: output.inference,
            postprocess: Duration::ZERO,
        },
    };
    Ok((outputs, info))
}

/// Runs the default guest on the request's media: one element is a whole clip (or a single
/// frame), several are frames in time order.
async fn run_pipeline(
    service: &Service,
    routed: &Routed,
    request: &wire::Request,
    progress: &Progress,
) -> Result<(Vec<wire::Output>, AccessInfo), V2Error> {
    let guest = &routed.guest;
    request.only_inputs(&[MEDIA])?;
    let input = request.input(MEDIA)?;
    let mut elements = input.bytes_elements()?;
    if elements.is_empty() {
        return Err(WireError(format!("input '{MEDIA}' has no elements: send one clip, or frames")).into());
    }
    if matches!(input.elements, wire::Elements::Strings(_)) {
        // JSON strings cannot carry binary files: in JSON, media elements are base64.
        for (i, e) in elements.iter_mut().enumerate() {
            *e = base64::engine::general_purpose::STANDARD.decode(&e[..]).map_err(|err| {
                WireError(format!(
                    "input '{MEDIA}' element {i} is not base64 ({err}); in JSON, media are base64 \
                     strings (or send them raw with the binary tensor extension)"
                ))
            })?;
        }
    }
    let declared = match request.parameters.get("content_type") {
        None => None,
        Some(wire::Parameter::Text(t)) => Some(t.clone()),
        Some(other) => {
            return Err(WireError(format!("parameter 'content_type' must be a string, got {other:?}")).into());
        }
    };
    let media = elements
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let content_type = match &declared {
                Some(t) => t.clone(),
                None => media::sniff(&data).map(str::to_string).ok_or_else(|| {
                    WireError(format!(
                        "input '{MEDIA}' element {i} is not {} by its first bytes; \
                         name its type in the request parameter 'content_type'",
                        media::recognised()
                    ))
                })?,
            };
            if !guest.accepts(&content_type) {
                return Err(WireError(format!(
                    "input '{MEDIA}' element {i} is '{content_type:.64}', which guest '{}' does not read; it reads: {}",
                    guest.name,
                    guest.info.accepts.join(", ")
                )));
            }
            Ok(Media { content_type, data })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let segments = segmentation(&request.parameters)?;
    let labels = &guest.info.labels;
    let classified =
        super::v1::run_guest(service, routed, media, labels.len() as u32, segments, progress).await?;
    let in_label_order = |top: &[(String, f32)]| -> Vec<f32> {
        labels.iter().map(|label| top.iter().find(|(l, _)| l == label).map_or(0.0, |(_, s)| *s)).collect()
    };
    let scores = in_label_order(&classified.top_k);
    let mut outputs = vec![
        wire::Output {
            name: LABEL.into(),
            shape: vec![1],
            data: OutputData::Bytes(vec![classified.label.clone().into_bytes()]),
        },
        wire::Output {
            name: SCORES.into(),
            shape: vec![1, labels.len() as u64],
            data: OutputData::Fp32(scores),
        },
    ];
    if segments.is_some() {
        let rows = &classified.segments;
        let time = |t: Option<f64>| t.map_or(f32::NAN, |t| t as f32);
        let table = rows
            .iter()
            .flat_map(|s| {
                let bounds = [s.start_frame as f32, s.end_frame as f32, time(s.start_s), time(s.end_s)];
                bounds.into_iter().chain(in_label_order(&s.top_k))
            })
            .collect();
        outputs.push(wire::Output {
            name: SEGMENTS.into(),
            shape: vec![rows.len() as u64, (SEGMENT_COLUMNS + labels.len()) as u64],
            data: OutputData::Fp32(table),
        });
        outputs.push(wire::Output {
            name: SEGMENT_LABELS.into(),
            shape: vec![rows.len() as u64],
            data: OutputData::Bytes(rows.iter().map(|s| s.label.clone().into_bytes()).collect()),
        });
    }
    Ok((outputs, AccessInfo::guest(guest, &classified)))
}

/// The timeline the request parameters `segment` (seconds) and `segment_frames` ask for, as
/// `/v1`'s query does; numbers may come as JSON numbers or strings.
fn segmentation(parameters: &wire::Parameters) -> Result<Option<Segmentation>, V2Error> {
    let text = |key: &str| -> Result<Option<String>, V2Error> {
        match parameters.get(key) {
            None => Ok(None),
            Some(wire::Parameter::Int(n)) => Ok(Some(n.to_string())),
            Some(wire::Parameter::Float(f)) => Ok(Some(f.to_string())),
            Some(wire::Parameter::Text(t)) => Ok(Some(t.clone())),
            Some(other) => {
                Err(WireError(format!("parameter '{key}' must be a number, got {other:?}")).into())
            }
        }
    };
    let (segment, frames) = (text("segment")?, text("segment_frames")?);
    motion_request::segmentation(segment.as_deref(), frames.as_deref()).map_err(|e| WireError(e.0).into())
}
