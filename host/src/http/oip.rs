//! The Open Inference Protocol (KServe v2) over REST, as Triton and KServe serve it, so their
//! clients, probes, dashboards and `perf_analyzer` work unchanged: the models that
//! `inference.rs` describes and runs, with JSON tensors and the binary tensor data extension
//! (`oip_codec.rs`), Triton's model configuration and statistics, the repository index, and
//! errors as `{"error": "…"}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::inference::{self, Target};
use super::oip_codec::{self as wire, WireError};
use super::work::{self, Work};
use super::{ApiError, AppState, VERSION};
use crate::metrics::StageTotals;
use crate::service::{Phase, ServiceError};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(config))
        .route("/v2/models/{model}/stats", get(stats))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}", get(metadata_at))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_at))
        .route("/v2/models/{model}/versions/{version}/config", get(config_at))
        .route("/v2/models/{model}/versions/{version}/stats", get(stats_at))
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
    axum::Json(json!({"name": "motion-host", "version": VERSION, "extensions": EXTENSIONS})).into_response()
}

/// The protocol extensions spoken, as `/v2` and gRPC's ServerMetadata list them.
pub(super) const EXTENSIONS: [&str; 4] =
    ["binary_tensor_data", "model_configuration", "statistics", "model_repository"];

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

fn model_metadata(name: &str, target: &Target) -> serde_json::Value {
    let d = inference::describe(name, target);
    let tensors = |ts: &[inference::TensorSpec]| -> Vec<serde_json::Value> {
        ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
    };
    let parameters: serde_json::Map<String, serde_json::Value> =
        d.parameters.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
    json!({
        "name": d.name,
        "versions": d.versions,
        "platform": d.platform,
        "inputs": tensors(&d.inputs),
        "outputs": tensors(&d.outputs),
        "parameters": parameters,
    })
}

/// Triton's model configuration as JSON (`GET /v2/models/{m}/config`).
fn model_config(name: &str, target: &Target) -> serde_json::Value {
    let c = inference::configure(name, target);
    let tensors = |ts: &[inference::TensorSpec]| -> Vec<serde_json::Value> {
        ts.iter()
            .map(|t| json!({"name": t.name, "data_type": format!("TYPE_{}", triton_type(&t.datatype)), "dims": t.shape}))
            .collect()
    };
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": tensors(&c.inputs),
        "output": tensors(&c.outputs),
        "instance_group": [{"name": format!("{}_0", c.name), "kind": c.instance_kind, "count": 1}],
    });
    let parameters: serde_json::Map<String, serde_json::Value> =
        c.parameters.iter().map(|(k, v)| (k.to_string(), json!({ "string_value": v }))).collect();
    config["parameters"] = parameters.into();
    if let Some((preferred, delay)) = &c.dynamic_batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": preferred,
            "max_queue_delay_microseconds": delay.as_micros() as u64,
        });
    }
    config
}

/// The configuration's name for a datatype: `TYPE_STRING` for BYTES, else the same word.
pub(super) fn triton_type(datatype: &str) -> &str {
    if datatype == "BYTES" { "STRING" } else { datatype }
}

async fn config(State(app): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, None)?;
    Ok(axum::Json(model_config(&model, &target)).into_response())
}

async fn config_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, Some(&version))?;
    Ok(axum::Json(model_config(&model, &target)).into_response())
}

/// Triton's statistics extension: `{"model_stats": [...]}` with durations in nanoseconds.
fn model_stats(name: &str, target: &Target) -> serde_json::Value {
    let s = inference::statistics(name, target);
    let d = |t: StageTotals| json!({"count": t.count, "ns": t.time.as_nanos() as u64});
    json!({"model_stats": [{
        "name": s.name,
        "version": s.version,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": d(s.success),
            "fail": d(s.fail),
            "queue": d(s.queue),
            "compute_input": d(s.compute_input),
            "compute_infer": d(s.compute_infer),
            "compute_output": d(s.compute_output),
        },
    }]})
}

async fn stats(State(app): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, None)?;
    Ok(axum::Json(model_stats(&model, &target)).into_response())
}

async fn stats_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, Some(&version))?;
    Ok(axum::Json(model_stats(&model, &target)).into_response())
}

/// `POST /v2/repository/index`: every model served, each `READY`.
async fn repository_index(State(app): State<Arc<AppState>>) -> Result<Response, V2Error> {
    let index: Vec<serde_json::Value> = inference::repository(&app.service)?
        .into_iter()
        .map(|(name, version)| json!({"name": name, "version": version, "state": "READY"}))
        .collect();
    Ok(axum::Json(index).into_response())
}

async fn metadata(State(app): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, None)?;
    Ok(axum::Json(model_metadata(&model, &target)).into_response())
}

async fn metadata_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let target = inference::resolve(&app.service, &model, Some(&version))?;
    Ok(axum::Json(model_metadata(&model, &target)).into_response())
}

async fn model_ready(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, V2Error> {
    inference::resolve(&app.service, &model, None)?;
    Ok(axum::Json(json!({"name": model, "ready": true})).into_response())
}

async fn model_ready_at(
    State(app): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    inference::resolve(&app.service, &model, Some(&version))?;
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
    let announced = inference::announce(&app.service, model);
    let upload = app
        .read_body_announced(&headers, body, &deadline, announced)
        .await
        .inspect_err(|e| work.body_failed(e))?;
    asked?;
    let _slot = app.admit()?;
    let (bytes, announced) = (upload.bytes, upload.announced);
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
        let pin = super::v1::pinned_digest(&headers)?;
        let asked = inference::Asked { name: model, version, pin };
        let answer =
            inference::run(&app.service, asked, &request, work.progress(), &mut served_by, announced).await?;
        let encode_started = Instant::now();
        let encoded = wire::encode_response(model, &answer.version, request.id.as_deref(), &answer.outputs);
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
        let mut info = answer.info;
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
