//! The Open Inference Protocol, spoken by Triton's own client (`tritonclient[http]`) to the real
//! server over TLS, in JSON and with the binary tensor extension: health, metadata, the raw
//! network and the guest pipeline, and errors. Its answers are checked against each other and
//! against the server's own `/v1/classify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use motion_guest_sdk::decode::{Limits, Media};
use motion_host_tests::{ServerBuilder, json, repo_root, test_python};

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

#[test]
fn tritonclient_drives_both_models_over_tls_in_json_and_binary() {
    let builder = ServerBuilder::new().tls();
    let ca = builder.dir().join("server.crt");
    let server = builder.start();
    let port = server.addresses()[0].port();

    let clips = [clip("pan_left.gif"), clip("tilt_up.gif")];
    let input: Vec<u8> = clips.iter().flat_map(|c| prepared(c)).flat_map(f32::to_le_bytes).collect();
    let scratch = tempfile::tempdir().unwrap();
    let input_path = scratch.path().join("input.f32");
    std::fs::write(&input_path, input).unwrap();
    let mut frames: Vec<PathBuf> =
        std::fs::read_dir(clip("dolly_in")).unwrap().map(|e| e.unwrap().path()).collect();
    frames.sort();

    let output = Command::new(test_python())
        .arg(repo_root().join("tests/python/oip_client.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&ca)
        .arg(&input_path)
        .args(&clips)
        .arg("--")
        .args(&frames)
        .output()
        .expect("run tests/python/oip_client.py");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "oip_client.py failed:\n{stderr}\nserver log:\n{}", server.log());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

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
    assert_eq!(raw_md["parameters"], serde_json::json!({"device": "cpu", "precision": "fp32"}));
    let pipe_md = &report["model_metadata"]["motion-classifier"];
    assert_eq!(pipe_md["inputs"][0]["datatype"], "BYTES");
    assert_eq!(pipe_md["parameters"]["model"], "motion-resnet18");
    assert_eq!(pipe_md["parameters"]["precision"], "fp32");
    let labels: Vec<&str> = pipe_md["parameters"]["labels"].as_str().unwrap().split(',').collect();
    assert_eq!(labels, motion_host_tests::LABELS);

    // JSON tensors and the binary extension carry the same numbers.
    let raw = &report["raw"];
    for (i, clip) in clips.iter().enumerate() {
        let json_logits = floats(&raw["json"][i]);
        let binary_logits = floats(&raw["binary"][i]);
        assert!(close(&json_logits, &binary_logits, 1e-4), "{json_logits:?} vs {binary_logits:?}");
        assert!(close(&json_logits, &floats(&raw["versioned"][i]), 1e-4));

        // The pipeline's scores are the softmax of the raw network's logits for the guest's
        // input, and its label is /v1/classify's for the same file.
        let pipelined = &report["pipeline"]["binary"][i];
        let scores = floats(&pipelined["scores"]);
        assert!(close(&softmax(&json_logits), &scores, 1e-3), "{clip:?}: {scores:?}");
        assert!(close(&scores, &floats(&report["pipeline"]["json"][i]["scores"]), 1e-6));
        assert_eq!(pipelined["label"], report["pipeline"]["json"][i]["label"]);
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
        assert_eq!(pipelined["label"], v1["label"], "{clip:?}");
        let best = labels.iter().position(|l| *l == v1["label"]).unwrap();
        assert!((scores[best] - v1["score"].as_f64().unwrap() as f32).abs() < 1e-6);
    }
    assert_eq!(report["pipeline"]["frames"], "dolly_in", "the frames clip, sent as 8 PNG elements");

    let log = server.log();
    let access =
        log.lines().filter(|l| l.contains("\"target\":\"access\"") && l.contains("/v2/models/{model}/infer"));
    assert!(access.count() >= 10, "one access line per infer call:\n{log}");
}
