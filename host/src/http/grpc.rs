//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, as KServe and Triton
//! serve it, for the models `inference.rs` describes and runs, and the standard
//! `grpc.health.v1.Health` service, so Kubernetes' gRPC probes work.
//!
//! gRPC shares the HTTP listeners (a request is told apart by its path; TLS offers `h2` by ALPN,
//! plain listeners take HTTP/2 without TLS) and the same machinery as `/v2`: a unary call's
//! message is read by [`AppState::read_body`] within the body limits and its deadline (the
//! server's, tightened by `grpc-timeout`) before it takes an in-flight slot, and the access
//! layer logs and counts it with its gRPC status. A stream's messages each take a slot, run
//! concurrently, and answer in the order they finish, each carrying its request's `id`; a
//! stream's end or reset stops the work still running. Errors map to status codes as Triton
//! maps them: NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE (starting, draining, full),
//! DEADLINE_EXCEEDED.
//!
//! The service is Triton's `grpc_service.proto` (`proto/`), whose KServe methods and messages
//! are KServe's `grpc_predict_v2.proto` and which adds what Triton's clients ask for first
//! (ModelConfig, ModelStatistics, RepositoryIndex). Model loading, shared memory, tracing and
//! log settings answer UNIMPLEMENTED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio_stream::Stream;
use tonic::{Code, Status};
use tower_service::Service as _;

use super::inference::{self, Target};
use super::oip_codec::{self as wire, Elements, Parameter};
use super::work::{self, Deadline, Work};
use super::{ApiError, AppState, VERSION};
use crate::metrics::StageTotals;
use crate::service::Phase;
use motion_model::Expected;

/// The code generated from `proto/grpc_service.proto` and `proto/model_config.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_response as infer_response;

/// The service's name, the first part of each RPC's path.
pub const SERVICE: &str = "inference.GRPCInferenceService";
/// The unary RPCs served, each its own route (so metrics and access lines name it).
const UNARY: [&str; 9] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
];
const STREAM: &str = "ModelStreamInfer";
const HEALTH: &str = "grpc.health.v1.Health";
/// The health service's paths start with this.
pub const HEALTH_PATH: &str = "/grpc.health.v1.Health/";
/// The header that names the guest version that answered, as `/v1` and `/v2` do.
const GUEST_DIGEST: &str = super::v1::GUEST_DIGEST_NAME;
/// How often the health service's watchers see the server's phase.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// The gRPC routes, merged into the one router.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for method in UNARY {
        router = router.route(&format!("/{SERVICE}/{method}"), any(unary));
    }
    router
        .route(&format!("/{SERVICE}/{STREAM}"), any(stream))
        // Any other method of the service: UNIMPLEMENTED, from the generated server.
        .route(&format!("/{SERVICE}/{{*method}}"), any(other))
        .route(&format!("/{HEALTH}/{{method}}"), any(health))
}

/// What a unary call's route handler hands the service: when it arrived and its deadline.
#[derive(Debug, Clone, Copy)]
struct Call {
    received: Instant,
    deadline: Deadline,
}

fn server(app: &Arc<AppState>) -> GrpcInferenceServiceServer<Grpc> {
    GrpcInferenceServiceServer::new(Grpc { app: Arc::clone(app) })
        .max_decoding_message_size(app.settings.max_body_bytes)
        .max_encoding_message_size(usize::MAX)
}

/// A unary RPC: the message is read whole within the limits and the deadline, then decoded.
async fn unary(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let deadline = match grpc_timeout(parts.headers.get(GRPC_TIMEOUT).map(|v| v.as_bytes())) {
        Ok(own) => app.deadline(received).tightened(received, own, work::Source::GrpcTimeout),
        Err(status) => return status.into_http::<Body>().into_response(),
    };
    let upload = match app.read_body(&parts.headers, body, &deadline).await {
        Ok(upload) => upload,
        Err(e) => return to_status(&e).into_http::<Body>().into_response(),
    };
    let mut request = Request::from_parts(parts, Body::from(upload.bytes.clone()));
    request.extensions_mut().insert(Call { received, deadline });
    match server(&app).call(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// A streaming RPC.
async fn stream(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let mut response = other(State(app), request).await;
    response.extensions_mut().insert(super::access::Stream);
    response
}

/// Anything but gRPC's services, on a `--grpc-bind` listener.
pub async fn not_served(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let message =
        format!("'{:.64}' is not served here: this listener (--grpc-bind) serves gRPC alone", uri.path());
    if super::access::is_grpc(&headers) {
        unimplemented(message)
    } else {
        ApiError::not_found(message).into_response()
    }
}

/// A gRPC answer of UNIMPLEMENTED.
pub fn unimplemented(message: String) -> Response {
    Status::unimplemented(message).into_http::<Body>().into_response()
}

/// A method not served, which the generated server refuses.
async fn other(State(app): State<Arc<AppState>>, request: Request) -> Response {
    match server(&app).call(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// `grpc.health.v1.Health`: SERVING once the models and guests are loaded, NOT_SERVING while
/// starting and draining, for the server (`""`) and for the inference service.
async fn health(State(app): State<Arc<AppState>>, request: Request) -> Response {
    static SERVER: OnceLock<
        tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    > = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let reporter = tonic_health::server::HealthReporter::new();
        let server = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        let service = Arc::downgrade(&app.service);
        tokio::spawn(async move {
            let mut last = None;
            while let Some(service) = service.upgrade() {
                let phase = service.phase();
                drop(service);
                if last != Some(phase) {
                    let status = if phase == Phase::Healthy {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    for name in ["", SERVICE] {
                        reporter.set_service_status(name, status).await;
                    }
                    last = Some(phase);
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        });
        server
    });
    match server.clone().call(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// The header a gRPC client's deadline travels in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: Option<&[u8]>) -> Result<Option<Duration>, Status> {
    let Some(value) = value else { return Ok(None) };
    let text = std::str::from_utf8(value).unwrap_or_default();
    let bad =
        || Status::invalid_argument(format!("grpc-timeout '{text:.16}' is not up to 8 digits and a unit"));
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(timeout))
}

/// The status a REST error becomes, as Triton maps its errors.
pub fn to_status(e: &ApiError) -> Status {
    let code = match e.status.as_u16() {
        400 | 415 | 422 => Code::InvalidArgument,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        413 | 429 => Code::ResourceExhausted,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        501 => Code::Unimplemented,
        s if s >= 500 => Code::Internal,
        _ => Code::Unknown,
    };
    Status::new(code, e.message.clone())
}

/// The service behind the generated server.
pub struct Grpc {
    app: Arc<AppState>,
}

type Answer<T> = Result<tonic::Response<T>, Status>;

impl Grpc {
    fn resolve(&self, name: &str, version: &str) -> Result<Target, Status> {
        inference::resolve(&self.app.service, name, Some(version)).map_err(|e| to_status(&e))
    }

    /// One inference request, from its message to its answer (or its error, and the digest of
    /// the guest version that ran it, if one did).
    async fn infer(
        &self,
        work: &Work,
        message: proto::ModelInferRequest,
        call: Call,
        pin: Option<&str>,
    ) -> (Result<(proto::ModelInferResponse, super::access::AccessInfo), ApiError>, Option<String>) {
        let mut served_by = None;
        let answer = async {
            let _slot = self.app.admit()?;
            let parse_started = Instant::now();
            let (model, version) = (message.model_name.clone(), message.model_version.clone());
            let request = decode(message)?;
            let parsing = parse_started.elapsed();
            let own = work::parameter_timeout(request.parameters.get("timeout"))?;
            let deadline = call.deadline.tightened(call.received, own, work::Source::Parameter);
            let asked = inference::Asked { name: &model, version: Some(&version), pin };
            // The model a call is for is named in its message, so it is announced only once read.
            let run = inference::run(
                &self.app.service,
                asked,
                &request,
                work.progress(),
                &mut served_by,
                Expected::default(),
            );
            let answer = work.within(&deadline, run).await?;
            let encode_started = Instant::now();
            let response = encode(&model, request.id.as_deref(), answer.version, &answer.outputs);
            let mut info = answer.info;
            info.timings.preprocess += parsing;
            info.timings.postprocess += encode_started.elapsed();
            Ok((response, info))
        }
        .await;
        (answer, served_by)
    }
}

/// The version a client asked for: gRPC's empty string is none.
fn pinned(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let value = metadata.get(GUEST_DIGEST).map(|v| v.to_str().ok());
    super::v1::digest_pin(value).map(|d| d.map(str::to_string)).map_err(|e| to_status(&e))
}

fn digest_metadata(metadata: &mut tonic::metadata::MetadataMap, digest: Option<&str>) {
    if let Some(value) = digest.and_then(|d| d.parse().ok()) {
        metadata.insert(GUEST_DIGEST, value);
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: tonic::Request<proto::ServerLiveRequest>,
    ) -> Answer<proto::ServerLiveResponse> {
        Ok(tonic::Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: tonic::Request<proto::ServerReadyRequest>,
    ) -> Answer<proto::ServerReadyResponse> {
        Ok(tonic::Response::new(proto::ServerReadyResponse {
            ready: self.app.service.phase() == Phase::Healthy,
        }))
    }

    async fn model_ready(
        &self,
        request: tonic::Request<proto::ModelReadyRequest>,
    ) -> Answer<proto::ModelReadyResponse> {
        let m = request.into_inner();
        // As Triton: an unknown model is not ready, not an error.
        let ready = self.app.service.phase() == Phase::Healthy && self.resolve(&m.name, &m.version).is_ok();
        Ok(tonic::Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: tonic::Request<proto::ServerMetadataRequest>,
    ) -> Answer<proto::ServerMetadataResponse> {
        Ok(tonic::Response::new(proto::ServerMetadataResponse {
            name: "motion-host".into(),
            version: VERSION.into(),
            extensions: super::oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: tonic::Request<proto::ModelMetadataRequest>,
    ) -> Answer<proto::ModelMetadataResponse> {
        let m = request.into_inner();
        let d = inference::describe(&m.name, &self.resolve(&m.name, &m.version)?);
        let tensors = |ts: Vec<inference::TensorSpec>| {
            ts.into_iter()
                .map(|t| proto::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(tonic::Response::new(proto::ModelMetadataResponse {
            name: d.name,
            versions: d.versions,
            platform: d.platform.into(),
            inputs: tensors(d.inputs),
            outputs: tensors(d.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: tonic::Request<proto::ModelInferRequest>,
    ) -> Answer<proto::ModelInferResponse> {
        let call = request.extensions().get::<Call>().copied().unwrap_or_else(|| {
            let received = Instant::now();
            Call { received, deadline: self.app.deadline(received) }
        });
        let pin = pinned(request.metadata())?;
        let work = Work::start();
        let (answer, served_by) = self.infer(&work, request.into_inner(), call, pin.as_deref()).await;
        work.finish();
        match answer {
            Ok((message, info)) => {
                let mut response = tonic::Response::new(message);
                digest_metadata(response.metadata_mut(), served_by.as_deref());
                response.extensions_mut().insert(info);
                Ok(response)
            }
            Err(e) => {
                let mut status = to_status(&e);
                digest_metadata(status.metadata_mut(), served_by.as_deref());
                Err(status)
            }
        }
    }

    async fn model_stream_infer(
        &self,
        request: tonic::Request<tonic::Streaming<proto::ModelInferRequest>>,
    ) -> Answer<Pin<Box<dyn Stream<Item = Result<proto::ModelStreamInferResponse, Status>> + Send>>> {
        let pin = pinned(request.metadata())?;
        // The stream's deadline bounds the whole call, as gRPC's do; each request in it has its
        // own from --request-timeout and its `timeout` parameter.
        let timeout = grpc_timeout(request.metadata().get(GRPC_TIMEOUT).map(|v| v.as_bytes()))?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let grpc = Arc::new(Grpc { app: Arc::clone(&self.app) });
        // A stream runs at most as many requests at once as the server does; past that its
        // next message is not read until one finishes (HTTP/2 flow control holds the client).
        let most = self.app.settings.max_in_flight;
        tokio::spawn(async move {
            // Dropped when the stream ends or its client goes away: the work still running
            // stops there (each request's `Work` counts its cancellation).
            let mut running = tokio::task::JoinSet::new();
            let mut open = true;
            let expired = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            while open || !running.is_empty() {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = &mut expired => {
                        let _ = tx.send(Err(Status::deadline_exceeded("the stream's grpc-timeout passed"))).await;
                        break;
                    }
                    next = incoming.message(), if open && running.len() < most => match next {
                        Ok(Some(message)) => {
                            let (grpc, tx, pin) = (Arc::clone(&grpc), tx.clone(), pin.clone());
                            running.spawn(async move {
                                let reply = grpc.stream_one(message, pin.as_deref()).await;
                                let _ = tx.send(Ok(reply)).await;
                            });
                        }
                        Ok(None) => open = false,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    },
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        request: tonic::Request<proto::ModelConfigRequest>,
    ) -> Answer<proto::ModelConfigResponse> {
        let m = request.into_inner();
        let c = inference::configure(&m.name, &self.resolve(&m.name, &m.version)?);
        let data_type = |datatype: &str| {
            let name = format!("TYPE_{}", super::oip::triton_type(datatype));
            proto::DataType::from_str_name(&name).unwrap_or(proto::DataType::TypeInvalid) as i32
        };
        let config = proto::ModelConfig {
            name: c.name.clone(),
            platform: c.platform.into(),
            backend: c.backend.into(),
            max_batch_size: c.max_batch_size as i32,
            input: c
                .inputs
                .iter()
                .map(|t| proto::ModelInput {
                    name: t.name.clone(),
                    data_type: data_type(&t.datatype),
                    dims: t.shape.clone(),
                    ..Default::default()
                })
                .collect(),
            output: c
                .outputs
                .iter()
                .map(|t| proto::ModelOutput {
                    name: t.name.clone(),
                    data_type: data_type(&t.datatype),
                    dims: t.shape.clone(),
                    ..Default::default()
                })
                .collect(),
            instance_group: vec![proto::ModelInstanceGroup {
                name: format!("{}_0", c.name),
                kind: proto::model_instance_group::Kind::from_str_name(c.instance_kind)
                    .unwrap_or(proto::model_instance_group::Kind::Auto) as i32,
                count: 1,
                ..Default::default()
            }],
            scheduling_choice: c.dynamic_batching.map(|(preferred, delay)| {
                proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
                    preferred_batch_size: preferred.iter().map(|&n| n as i32).collect(),
                    max_queue_delay_microseconds: delay.as_micros() as u64,
                    ..Default::default()
                })
            }),
            parameters: c
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), proto::ModelParameter { string_value: v.clone() }))
                .collect(),
            ..Default::default()
        };
        Ok(tonic::Response::new(proto::ModelConfigResponse { config: Some(config) }))
    }

    async fn model_statistics(
        &self,
        request: tonic::Request<proto::ModelStatisticsRequest>,
    ) -> Answer<proto::ModelStatisticsResponse> {
        let m = request.into_inner();
        // No name: every model, as Triton answers.
        let names = if m.name.is_empty() {
            inference::served_names(&self.app.service).map_err(|e| to_status(&e))?
        } else {
            vec![m.name.clone()]
        };
        let mut model_stats = Vec::new();
        for name in names {
            let s = inference::statistics(&name, &self.resolve(&name, &m.version)?);
            let d = |t: StageTotals| {
                Some(proto::StatisticDuration { count: t.count, ns: t.time.as_nanos() as u64 })
            };
            model_stats.push(proto::ModelStatistics {
                name: s.name,
                version: s.version,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(proto::InferStatistics {
                    success: d(s.success),
                    fail: d(s.fail),
                    queue: d(s.queue),
                    compute_input: d(s.compute_input),
                    compute_infer: d(s.compute_infer),
                    compute_output: d(s.compute_output),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Ok(tonic::Response::new(proto::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        _: tonic::Request<proto::RepositoryIndexRequest>,
    ) -> Answer<proto::RepositoryIndexResponse> {
        let index = inference::repository(&self.app.service).map_err(|e| to_status(&e))?;
        let models = index
            .into_iter()
            .map(|(name, version)| proto::repository_index_response::ModelIndex {
                name,
                version,
                state: "READY".into(),
                reason: String::new(),
            })
            .collect();
        Ok(tonic::Response::new(proto::RepositoryIndexResponse { models }))
    }
}

impl Grpc {
    /// One message of a stream: answered, or its error in the stream's `error_message` (the
    /// stream goes on), logged and counted as a call of its own.
    async fn stream_one(
        &self,
        message: proto::ModelInferRequest,
        pin: Option<&str>,
    ) -> proto::ModelStreamInferResponse {
        let received = Instant::now();
        let id = message.id.clone();
        let call = Call { received, deadline: self.app.deadline(received) };
        let work = Work::start();
        let (answer, _) = self.infer(&work, message, call, pin).await;
        work.finish();
        let route = format!("/{SERVICE}/{STREAM}");
        match answer {
            Ok((response, info)) => {
                super::access::stream_message(&route, &id, Code::Ok as i32, Some(&info), received.elapsed());
                proto::ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(response),
                }
            }
            Err(e) => {
                let status = to_status(&e);
                super::access::stream_message(&route, &id, status.code() as i32, None, received.elapsed());
                proto::ModelStreamInferResponse {
                    error_message: e.message,
                    // As Triton: the failed request's id comes back with its error.
                    infer_response: Some(proto::ModelInferResponse { id, ..Default::default() }),
                }
            }
        }
    }
}

/// A request message as the wire's request: typed `contents`, or `raw_input_contents` (one
/// per input, in order, BYTES elements length-prefixed as in the binary extension).
fn decode(message: proto::ModelInferRequest) -> Result<wire::Request, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if message.inputs.is_empty() {
        return bad("the inference request has no inputs".into());
    }
    let raw = !message.raw_input_contents.is_empty();
    if raw && message.raw_input_contents.len() != message.inputs.len() {
        return bad(format!(
            "raw_input_contents has {} entries for {} inputs: send one per input, in order",
            message.raw_input_contents.len(),
            message.inputs.len()
        ));
    }
    let mut raw_contents = message.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for input in message.inputs {
        let shape = input.shape.iter().map(|&d| u64::try_from(d)).collect::<Result<Vec<_>, _>>();
        let Ok(shape) = shape else {
            return bad(format!("input '{:.64}' has a negative dimension: {:?}", input.name, input.shape));
        };
        let elements = match (raw_contents.next(), input.contents) {
            (Some(_), Some(_)) => {
                return bad(format!(
                    "input '{:.64}' has contents while the request has raw_input_contents; use one or the other",
                    input.name
                ));
            }
            (Some(bytes), None) => Elements::Raw(bytes),
            (None, Some(c)) => typed(&input.name, &input.datatype, c)?,
            (None, None) => return bad(format!("input '{:.64}' has no contents", input.name)),
        };
        inputs.push(wire::Input { name: input.name, shape, datatype: input.datatype, elements });
    }
    let outputs = if message.outputs.is_empty() {
        None
    } else {
        Some(message.outputs.into_iter().map(|o| wire::Requested { name: o.name, binary: true }).collect())
    };
    Ok(wire::Request {
        id: Some(message.id).filter(|id| !id.is_empty()),
        parameters: parameters(message.parameters)?,
        inputs,
        outputs,
        binary_output: true,
    })
}

/// Typed contents as the wire's elements. FP32 travels as its little-endian bytes.
fn typed(name: &str, datatype: &str, c: proto::InferTensorContents) -> Result<Elements, ApiError> {
    let numbers = |v: Vec<f64>| Ok(Elements::Numbers(v));
    if !c.fp32_contents.is_empty() {
        if datatype != "FP32" {
            return Err(ApiError::bad_request(format!(
                "input '{name:.64}' is {datatype:.16} but has fp32_contents"
            )));
        }
        return Ok(Elements::Raw(c.fp32_contents.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    if !c.bytes_contents.is_empty() {
        return Ok(Elements::Strings(c.bytes_contents));
    }
    if !c.bool_contents.is_empty() {
        return Ok(Elements::Bools(c.bool_contents));
    }
    match () {
        _ if !c.fp64_contents.is_empty() => numbers(c.fp64_contents),
        _ if !c.int_contents.is_empty() => numbers(c.int_contents.into_iter().map(f64::from).collect()),
        _ if !c.uint_contents.is_empty() => numbers(c.uint_contents.into_iter().map(f64::from).collect()),
        _ if !c.int64_contents.is_empty() => {
            numbers(c.int64_contents.into_iter().map(|x| x as f64).collect())
        }
        _ if !c.uint64_contents.is_empty() => {
            numbers(c.uint64_contents.into_iter().map(|x| x as f64).collect())
        }
        // An empty tensor: its shape decides whether that is right.
        _ if datatype == "BYTES" => Ok(Elements::Strings(Vec::new())),
        _ => Ok(Elements::Raw(Vec::new())),
    }
}

fn parameters(map: HashMap<String, proto::InferParameter>) -> Result<wire::Parameters, ApiError> {
    use proto::infer_parameter::ParameterChoice as P;
    map.into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                Some(P::BoolParam(b)) => Parameter::Bool(b),
                Some(P::Int64Param(n)) => Parameter::Int(n),
                Some(P::Uint64Param(n)) => match i64::try_from(n) {
                    Ok(n) => Parameter::Int(n),
                    Err(_) => {
                        return Err(ApiError::bad_request(format!(
                            "parameter '{key:.64}' is too large: {n}"
                        )));
                    }
                },
                Some(P::DoubleParam(x)) => Parameter::Float(x),
                Some(P::StringParam(s)) => Parameter::Text(s),
                None => return Err(ApiError::bad_request(format!("parameter '{key:.64}' has no value"))),
            };
            Ok((key, value))
        })
        .collect()
}

/// The answer as a response message, every output in `raw_output_contents` as Triton sends
/// them (FP32 little-endian; BYTES length-prefixed).
fn encode(
    model: &str,
    id: Option<&str>,
    version: String,
    outputs: &[(wire::Output, bool)],
) -> proto::ModelInferResponse {
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for (o, _) in outputs {
        let mut bytes = Vec::new();
        o.data.write_raw(&mut bytes);
        tensors.push(infer_response::InferOutputTensor {
            name: o.name.clone(),
            datatype: o.data.datatype().into(),
            shape: o.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
        raw.push(bytes);
    }
    proto::ModelInferResponse {
        model_name: model.into(),
        model_version: version,
        id: id.unwrap_or_default().into(),
        outputs: tensors,
        raw_output_contents: raw,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::model_infer_request as infer_request;

    #[test]
    fn grpc_timeout_is_digits_and_a_unit() {
        for (text, expected) in [
            ("2S", Duration::from_secs(2)),
            ("1500m", Duration::from_millis(1500)),
            ("1H", Duration::from_secs(3600)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(grpc_timeout(Some(text.as_bytes())).unwrap(), Some(expected), "{text}");
        }
        for text in ["S", "2", "123456789S", "2s", "-1S", "1.5S"] {
            assert!(grpc_timeout(Some(text.as_bytes())).is_err(), "{text}");
        }
    }

    #[test]
    fn raw_and_typed_contents_become_the_same_tensors() {
        let input = |contents| infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![2],
            contents,
            ..Default::default()
        };
        let typed = proto::ModelInferRequest {
            inputs: vec![input(Some(proto::InferTensorContents {
                fp32_contents: vec![1.5, -2.0],
                ..Default::default()
            }))],
            ..Default::default()
        };
        let raw = proto::ModelInferRequest {
            inputs: vec![input(None)],
            raw_input_contents: vec![[1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()],
            ..Default::default()
        };
        let (a, b) = (decode(typed).unwrap(), decode(raw).unwrap());
        assert_eq!(a.inputs[0].fp32_bytes().unwrap(), b.inputs[0].fp32_bytes().unwrap());

        let both = proto::ModelInferRequest {
            inputs: vec![input(Some(Default::default()))],
            raw_input_contents: vec![vec![0; 8]],
            ..Default::default()
        };
        assert!(decode(both).unwrap_err().message.contains("one or the other"));
        let short = proto::ModelInferRequest {
            inputs: vec![input(None), input(None)],
            raw_input_contents: vec![vec![0; 8]],
            ..Default::default()
        };
        assert!(decode(short).unwrap_err().message.contains("one per input"));
    }

    #[test]
    fn errors_map_to_the_codes_triton_uses() {
        for (status, code) in [
            (400, Code::InvalidArgument),
            (422, Code::InvalidArgument),
            (404, Code::NotFound),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (500, Code::Internal),
        ] {
            let e = ApiError::new(axum::http::StatusCode::from_u16(status).unwrap(), "x", "m");
            assert_eq!(to_status(&e).code(), code, "{status}");
        }
    }
}
