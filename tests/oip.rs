//! The Open Inference Protocol, spoken by Triton's own clients to the real server: over REST
//! (`tritonclient.http`, in JSON and with the binary tensor extension) and over gRPC
//! (`tritonclient.grpc` and the stubs it ships: typed and raw contents, the stream, the health
//! service), over TLS and over plain HTTP/2: health, metadata, the raw network and the guest
//! pipeline, and errors. Their answers are checked against each other and against the server's
//! own `/v1/classify`; Triton's `perf_analyzer` loads both models over both protocols.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use motion_guest_sdk::decode::{Limits, Media};
use motion_host_tests::{Server, ServerBuilder, json, perf_analyzer, repo_root, test_python};

fn clip(name: &str) -> PathBuf {
    repo_root().join("tests/clips").join(name)
}

/// The model input the guest makes of a GIF (the code the guest runs, built natively).
fn prepared(path: &Path) -> Vec<f32> {
    let data = std::fs::read(path).unwrap();
    let media = [Media { content_type: "image/gif", data: &data }];
    motion_guest_sdk::prepare(&media, &Limits::default()).unwrap().input
}

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

fn close(a: &[f32], b: &[f32], tolerance: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
}

/// The clips the clients send and the raw model's input made of them, in `dir`.
struct Inputs {
    clips: [PathBuf; 2],
    input_path: PathBuf,
    frames: Vec<PathBuf>,
}

impl Inputs {
    fn new(dir: &Path) -> Inputs {
        let clips = [clip("pan_left.gif"), clip("tilt_up.gif")];
        let input: Vec<u8> = clips.iter().flat_map(|c| prepared(c)).flat_map(f32::to_le_bytes).collect();
        let input_path = dir.join("input.f32");
        std::fs::write(&input_path, input).unwrap();
        let mut frames: Vec<PathBuf> =
            std::fs::read_dir(clip("pan_left")).unwrap().map(|e| e.unwrap().path()).collect();
        frames.sort();
        Inputs { clips, input_path, frames }
    }

    /// Runs a client script of `tests/python` against `server`; its JSON report.
    fn run(&self, script: &str, server: &Server, ca: &OsStr) -> serde_json::Value {
        self.run_on(script, server, server.addresses()[0].port(), ca)
    }

    /// Runs a client script against `server`'s listener on `port`.
    fn run_on(&self, script: &str, server: &Server, port: u16, ca: &OsStr) -> serde_json::Value {
        let output = Command::new(test_python())
            .env("METRICS_URL", server.url("/metrics"))
            .arg(repo_root().join("tests/python").join(script))
            .arg(format!("127.0.0.1:{port}"))
            .arg(ca)
            .arg(&self.input_path)
            .args(&self.clips)
            .arg("--")
            .args(&self.frames)
            .output()
            .unwrap_or_else(|e| panic!("run tests/python/{script}: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{script} failed:\n{stderr}\nserver log:\n{}", server.log());
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The pipeline's answer for each clip is `/v1/classify`'s, and its scores the softmax of
    /// the raw network's `logits` for the same clip.
    fn check_pipeline(&self, server: &Server, logits: &serde_json::Value, answers: &[&serde_json::Value]) {
        let labels = motion_host_tests::LABELS;
        for (i, clip) in self.clips.iter().enumerate() {
            let scores = floats(&answers[i]["scores"]);
            assert!(close(&softmax(&floats(&logits[i])), &scores, 1e-3), "{clip:?}: {scores:?}");
            let gif = std::fs::read(clip).unwrap();
            let response = server
                .client()
                .post(server.url("/v1/classify"))
                .header("Content-Type", "image/gif")
                .body(gif)
                .send()
                .unwrap();
            let (status, v1) = json(response);
            assert_eq!(status, 200, "{v1}");
            assert_eq!(answers[i]["label"], v1["label"], "{clip:?}");
            let best = labels.iter().position(|l| *l == v1["label"]).unwrap();
            assert!((scores[best] - v1["score"].as_f64().unwrap() as f32).abs() < 1e-6);
        }
    }
}

#[test]
fn tritonclient_drives_both_models_over_tls_in_json_and_binary() {
    let builder = ServerBuilder::new().tls();
    let ca = builder.dir().join("server.crt");
    let server = builder.start();
    let scratch = tempfile::tempdir().unwrap();
    let inputs = Inputs::new(scratch.path());
    let clips = &inputs.clips;
    let report = inputs.run("oip_client.py", &server, ca.as_os_str());

    let metadata = &report["server_metadata"];
    assert_eq!(metadata["name"], "motion-host");
    assert!(metadata["extensions"].as_array().unwrap().contains(&"binary_tensor_data".into()));
    let raw_md = &report["model_metadata"]["motion-resnet18"];
    assert_eq!(
        raw_md["inputs"][0],
        serde_json::json!({"name": "input", "datatype": "FP32", "shape": [-1, 8, 112, 112]})
    );
    assert_eq!(
        raw_md["outputs"][0],
        serde_json::json!({"name": "logits", "datatype": "FP32", "shape": [-1, 16]})
    );
    assert_eq!(
        raw_md["parameters"],
        serde_json::json!({"device": "cpu", "precision": "fp32", "preprocessing": "1.1"})
    );
    let pipe_md = &report["model_metadata"]["motion-classifier"];
    assert_eq!(pipe_md["inputs"][0]["datatype"], "BYTES");
    assert_eq!(pipe_md["parameters"]["model"], "motion-resnet18");
    assert_eq!(pipe_md["parameters"]["precision"], "fp32");
    let labels: Vec<&str> = pipe_md["parameters"]["labels"].as_str().unwrap().split(',').collect();
    assert_eq!(labels, motion_host_tests::LABELS);

    // JSON tensors and the binary extension carry the same numbers.
    let raw = &report["raw"];
    for i in 0..clips.len() {
        let json_logits = floats(&raw["json"][i]);
        let binary_logits = floats(&raw["binary"][i]);
        assert!(close(&json_logits, &binary_logits, 1e-4), "{json_logits:?} vs {binary_logits:?}");
        assert!(close(&json_logits, &floats(&raw["versioned"][i]), 1e-4));
        let (binary, in_json) = (&report["pipeline"]["binary"][i], &report["pipeline"]["json"][i]);
        assert!(close(&floats(&binary["scores"]), &floats(&in_json["scores"]), 1e-6));
        assert_eq!(binary["label"], in_json["label"]);
    }
    let answers: Vec<&serde_json::Value> = report["pipeline"]["binary"].as_array().unwrap().iter().collect();
    inputs.check_pipeline(&server, &raw["json"], &answers);
    assert_eq!(
        report["pipeline"]["frames"], "pan_left",
        "the frames clip, sent as one PNG element per frame in time order"
    );

    let log = server.log();
    let access =
        log.lines().filter(|l| l.contains("\"target\":\"access\"") && l.contains("/v2/models/{model}/infer"));
    assert!(access.count() >= 10, "one access line per infer call:\n{log}");
}

#[test]
fn tritonclient_grpc_drives_both_models_over_tls_with_the_same_answers() {
    let builder = ServerBuilder::new().tls();
    let ca = builder.dir().join("server.crt");
    let server = builder.start();
    let scratch = tempfile::tempdir().unwrap();
    let inputs = Inputs::new(scratch.path());
    let report = inputs.run("grpc_client.py", &server, ca.as_os_str());

    assert_eq!(report["errors"]["unknown_service"], "UNIMPLEMENTED");
    let health = &report["health"];
    assert_eq!(health[""], "SERVING");
    assert_eq!(health["inference.GRPCInferenceService"], "SERVING");
    assert_eq!(health["no.such.Service"], "NOT_FOUND");
    assert_eq!(report["server_metadata"]["name"], "motion-host");
    let raw_md = &report["model_metadata"]["motion-resnet18"];
    assert_eq!(
        raw_md["inputs"][0],
        serde_json::json!({"name": "input", "datatype": "FP32", "shape": ["-1", "8", "112", "112"]})
    );
    assert_eq!(
        report["model_metadata"]["motion-classifier"]["outputs"][1]["shape"],
        serde_json::json!(["1", "16"])
    );
    // Triton's model configuration: dimensions without the batch, which the raw model takes.
    let config = &report["model_config"]["motion-resnet18"];
    assert_eq!(config["max_batch_size"], 64);
    assert_eq!(config["input"][0]["dims"], serde_json::json!(["8", "112", "112"]));
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert!(config["dynamic_batching"]["max_queue_delay_microseconds"].is_string(), "{config}");
    let pipeline = &report["model_config"]["motion-classifier"];
    assert_eq!(pipeline["input"][0]["data_type"], "TYPE_STRING");
    // The labels, which gRPC's metadata has no place for, are in the configuration.
    let labels = pipeline["parameters"]["labels"]["string_value"].as_str().unwrap();
    assert_eq!(labels.split(',').collect::<Vec<_>>(), motion_host_tests::LABELS);
    let index = report["repository_index"]["models"].as_array().unwrap();
    assert_eq!(index.len(), 2, "{index:?}");
    assert!(index.iter().all(|m| m["state"] == "READY"));

    // Typed contents and raw_input_contents carry the same numbers, and match REST's.
    let raw = &report["raw"];
    let rest = rest_logits(&server, &inputs);
    for i in 0..inputs.clips.len() {
        let (typed, raw_contents) = (floats(&raw["typed_contents"][i]), floats(&raw["raw_contents"][i]));
        assert!(close(&typed, &raw_contents, 1e-4), "{typed:?} vs {raw_contents:?}");
        assert!(close(&typed, &rest[i], 1e-4), "{typed:?} vs REST {:?}", rest[i]);
    }
    let answers: Vec<&serde_json::Value> = report["pipeline"]["clips"].as_array().unwrap().iter().collect();
    inputs.check_pipeline(&server, &raw["raw_contents"], &answers);
    assert_eq!(
        report["pipeline"]["frames"], "pan_left",
        "the frames clip, sent as one PNG element per frame in time order"
    );

    // The stream: each answer carries its request's id; a failed one its error, and the
    // stream goes on.
    let stream = &report["stream"];
    let first = answers[0]["label"].clone();
    for i in 0..4 {
        assert_eq!(stream["ok"][format!("stream-{i}")], first, "{stream}");
    }
    let errors = stream["errors"].as_array().unwrap();
    assert!(errors.len() == 1 && errors[0].as_str().unwrap().contains("no-such-model"), "{stream}");

    // Counted and logged as gRPC calls, by RPC and status code, with the request ids sent.
    let route = "/inference.GRPCInferenceService/ModelInfer";
    let sample =
        |code: &str| format!("motion_host_grpc_requests_total{{grpc_code=\"{code}\",route=\"{route}\"}}");
    assert!(server.metric(&sample("OK")) >= 5.0, "{}", server.get("/metrics").text().unwrap());
    assert!(server.metric(&sample("INVALID_ARGUMENT")) >= 4.0);
    let stream_route = "/inference.GRPCInferenceService/ModelStreamInfer";
    assert_eq!(
        server
            .metric(&format!("motion_host_grpc_requests_total{{grpc_code=\"OK\",route=\"{stream_route}\"}}")),
        4.0
    );
    // The call whose deadline passed was stopped, by the server or by the client's reset.
    let stopped: f64 = ["body", "guest", "queue", "inference"]
        .iter()
        .map(|stage| {
            server.metric(&format!("motion_host_requests_deadline_exceeded_total{{stage=\"{stage}\"}}"))
                + server.metric(&format!("motion_host_requests_cancelled_total{{stage=\"{stage}\"}}"))
        })
        .sum();
    assert!(stopped >= 1.0, "the 5 ms call was neither stopped at its deadline nor cancelled");
    let log = server.log();
    let access = log.lines().filter(|l| {
        l.contains("\"target\":\"access\"") && l.contains(route) && l.contains("\"grpc_code\":\"OK\"")
    });
    assert!(access.count() >= 5, "one access line per call:\n{log}");
    assert!(log.contains("\"request_id\":\"grpc-pipeline\""), "the client's request id in the span:\n{log}");
    assert!(log.contains("\"request_id\":\"stream-3\""), "a stream message's id in its span:\n{log}");
    let stats = &report["statistics"]["model_stats"][0];
    assert!(
        stats["inference_stats"]["success"]["count"].as_str().unwrap().parse::<u64>().unwrap() >= 7,
        "{stats}"
    );
}

/// The raw network's logits for the inputs' clips, from `/v2` in JSON.
fn rest_logits(server: &Server, inputs: &Inputs) -> Vec<Vec<f32>> {
    let data: Vec<f32> = inputs.clips.iter().flat_map(|c| prepared(c)).collect();
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [2, 8, 112, 112], "datatype": "FP32", "data": data}]});
    let response = server
        .client()
        .post(server.url("/v2/models/motion-resnet18/versions/1/infer"))
        .json(&body)
        .send()
        .unwrap();
    let (status, answer) = json(response);
    assert_eq!(status, 200, "{answer}");
    floats(&answer["outputs"][0]["data"]).chunks(16).map(<[f32]>::to_vec).collect()
}

#[test]
fn grpc_speaks_plain_http2_beside_http1_and_on_its_own_listener() {
    let grpc_port = motion_host_tests::free_port();
    let server = ServerBuilder::new().arg(&format!("--grpc-bind=127.0.0.1:{grpc_port}")).start();
    let scratch = tempfile::tempdir().unwrap();
    let inputs = Inputs::new(scratch.path());
    for port in [server.addresses()[0].port(), grpc_port] {
        let report = inputs.run_on("grpc_client.py", &server, port, OsStr::new("-"));
        assert_eq!(report["health"][""], "SERVING");
        let answers: Vec<&serde_json::Value> =
            report["pipeline"]["clips"].as_array().unwrap().iter().collect();
        inputs.check_pipeline(&server, &report["raw"]["raw_contents"], &answers);
    }
    // HTTP/1.1 on the main listener, the same moment; the gRPC listener serves gRPC alone.
    assert_eq!(server.get("/v2/health/ready").status(), 200);
    let elsewhere =
        server.client().get(format!("http://127.0.0.1:{grpc_port}/v2/health/ready")).send().unwrap();
    motion_host_tests::assert_error(elsewhere, 404, "not_found", &["--grpc-bind"]);
}

/// One perf_analyzer run; its output, which must say it finished without an error.
fn run_perf_analyzer(server: &Server, protocol: &str, model: &str, data: &[&str]) -> String {
    let port = server.addresses()[0].port();
    let output = Command::new(perf_analyzer())
        .args(["-m", model, "-i", protocol, "-u", &format!("127.0.0.1:{port}"), "--shared-memory", "none"])
        .args(["--concurrency-range", "1:4:3", "--measurement-interval", "1500", "--max-trials", "3"])
        // A protocol check, not a measurement: the other tests share the machine, so any three
        // windows count as stable.
        .args(["--stability-percentage", "1000"])
        .args(data)
        .output()
        .expect("run perf_analyzer");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "perf_analyzer -i {protocol} -m {model} failed:\n{text}\nserver log:\n{}",
        server.log()
    );
    assert!(!text.contains("error"), "perf_analyzer -i {protocol} -m {model} reported an error:\n{text}");
    text
}

#[test]
fn perf_analyzer_loads_both_models_over_http_and_grpc() {
    let server = ServerBuilder::new().start();
    let scratch = tempfile::tempdir().unwrap();
    // The pipeline's one BYTES element, as perf_analyzer takes it: the serialized tensor
    // (length-prefixed), in base64.
    let gif = std::fs::read(clip("pan_left.gif")).unwrap();
    let serialized = [&(gif.len() as u32).to_le_bytes()[..], &gif].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(serialized);
    let data = scratch.path().join("media.json");
    let media = serde_json::json!({"data": [{"media": {"b64": b64, "shape": [1]}}]});
    std::fs::write(&data, media.to_string()).unwrap();
    let data = data.to_str().unwrap();
    for protocol in ["http", "grpc"] {
        let raw = run_perf_analyzer(&server, protocol, "motion-resnet18", &["--shape", "input:8,112,112"]);
        let pipeline = run_perf_analyzer(&server, protocol, "motion-classifier", &["--input-data", data]);
        for text in [raw, pipeline] {
            // Both concurrencies measured, and the server's own statistics read back.
            assert!(text.contains("Concurrency: 4, throughput:"), "{text}");
            let count = text.lines().find_map(|l| l.trim().strip_prefix("Successful request count: "));
            assert!(count.and_then(|c| c.parse::<u64>().ok()).is_some_and(|c| c > 0), "{text}");
        }
    }
}

#[test]
fn rest_reads_and_writes_json_as_triton_does() {
    // The module as its file has it: its kernels carry a NaN input through to NaN logits, which
    // the NaN case below needs. oneDNN's, in the module optimised for inference, may not.
    let server = ServerBuilder::new().arg("--plain-model").start();
    let post = |path: &str, body: Vec<u8>| {
        let response = server.client().post(server.url(path)).body(body).send().unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    };

    // A BYTES element in JSON is the string's own bytes: a GIF, raw, escaped only where JSON
    // must be (quote, backslash, control characters).
    let gif = std::fs::read(clip("pan_left.gif")).unwrap();
    let mut body = br#"{"inputs":[{"name":"media","shape":[1],"datatype":"BYTES","data":[""#.to_vec();
    for &b in &gif {
        match b {
            b'"' | b'\\' => body.extend([b'\\', b]),
            0..0x20 => body.extend(format!("\\u{b:04x}").bytes()),
            _ => body.push(b),
        }
    }
    body.extend(br#""]}],"outputs":[{"name":"label"}]}"#);
    assert!(std::str::from_utf8(&body).is_err(), "the body must not be UTF-8 for this case");
    let (status, text) = post("/v2/models/motion-classifier/infer", body);
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v1 = json(
        server
            .client()
            .post(server.url("/v1/classify"))
            .header("Content-Type", "image/gif")
            .body(gif)
            .send()
            .unwrap(),
    )
    .1;
    assert_eq!(answer["outputs"][0]["data"][0], v1["label"], "{text}");

    // NaN, Infinity and -Infinity in, at an integer version; NaN back out, as literals.
    let n = 8 * 112 * 112;
    let data: Vec<String> = ["NaN", "Infinity", "-Infinity"]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::repeat_n("0.5".to_string(), n - 3))
        .collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,8,112,112],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    );
    let (status, text) = post("/v2/models/motion-resnet18/versions/1/infer", body.into_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""data":[NaN,NaN,"#), "{text}");
    assert!(text.contains(r#""model_version":"1.1.0""#), "{text}");
    let (status, text) = post(
        "/v2/models/motion-resnet18/versions/2/infer",
        br#"{"inputs":[{"name":"input","shape":[0],"datatype":"FP32","data":[]}]}"#.to_vec(),
    );
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("'2'") && text.contains("'1'"), "{text}");

    // The statistics saw it; the repository lists both models.
    let (status, stats) = json(server.get("/v2/models/motion-resnet18/versions/1/stats"));
    assert_eq!(status, 200, "{stats}");
    let stats = &stats["model_stats"][0];
    assert_eq!((stats["name"].as_str(), stats["version"].as_str()), (Some("motion-resnet18"), Some("1")));
    assert!(stats["inference_stats"]["success"]["count"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["execution_count"].as_u64().unwrap() >= 1, "{stats}");
    let (status, text) = post("/v2/repository/index", Vec::new());
    assert_eq!(status, 200, "{text}");
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = index.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["motion-resnet18", "motion-classifier"]);
    let (status, config) = json(server.get("/v2/models/motion-classifier/config"));
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(
        config["input"][0],
        serde_json::json!({"name": "media", "data_type": "TYPE_STRING", "dims": [-1]})
    );
}
