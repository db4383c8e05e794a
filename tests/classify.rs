//! Classification end to end over real TLS: the four input kinds, the response contract, the
//! distribution over all 16 labels, every error case, and a guest fault that leaves the host
//! serving.

use motion_host_tests::{LABELS, Server, ServerBuilder, assert_error, clips, default_model_version, json};
use reqwest::blocking::multipart::{Form, Part};

/// An HTTPS server with the default model and guest and an 8 MB body limit.
fn server() -> Server {
    ServerBuilder::new().tls().arg("--max-body-bytes=8000000").start()
}

fn post(server: &Server, path: &str, content_type: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    server.client().post(server.url(path)).header("content-type", content_type).body(body).send().unwrap()
}

fn multipart(server: &Server, path: &str, frames: Vec<(Vec<u8>, &str)>) -> reqwest::blocking::Response {
    let mut form = Form::new();
    for (i, (data, mime)) in frames.into_iter().enumerate() {
        form = form.part("frame", Part::bytes(data).file_name(format!("{i:03}.img")).mime_str(mime).unwrap());
    }
    server.client().post(server.url(path)).multipart(form).send().unwrap()
}

/// Checks the whole 200 body against the contract and returns it.
fn assert_classification(
    response: reqwest::blocking::Response,
    top_k: usize,
    frames_total: u64,
    frames_used: u64,
) -> serde_json::Value {
    let (status, body) = json(response);
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "batch_size",
        "frames_total",
        "frames_used",
        "guest",
        "label",
        "model",
        "score",
        "timings_ms",
        "top_k",
    ];
    expected.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, expected, "{body}");

    let top = body["top_k"].as_array().unwrap();
    assert_eq!(top.len(), top_k, "{body}");
    assert_eq!(body["label"], top[0]["label"]);
    assert_eq!(body["score"], top[0]["score"]);
    let scores: Vec<f64> = top.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    for entry in top {
        assert!(LABELS.contains(&entry["label"].as_str().unwrap()), "{entry}");
    }
    assert_eq!(body["frames_total"], frames_total, "{body}");
    assert_eq!(body["frames_used"], frames_used, "{body}");
    assert_eq!(body["guest"]["name"], "motion");
    assert_eq!(body["guest"]["version"], "0.1.0");
    let digest = body["guest"]["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64, "{digest}");
    assert_eq!(
        body["model"],
        serde_json::json!({"name": "motion-resnet18", "version": default_model_version()})
    );
    let t = &body["timings_ms"];
    for stage in ["preprocess", "queue", "inference", "postprocess", "total"] {
        assert!(t[stage].as_f64().is_some_and(|v| v >= 0.0), "{stage}: {t}");
    }
    assert!(t["inference"].as_f64().unwrap() > 0.0, "{t}");
    let instantiate = t["instantiate"].as_f64().unwrap();
    assert!(
        instantiate > 0.0 && instantiate <= t["preprocess"].as_f64().unwrap(),
        "instantiation is part of preprocess: {t}"
    );
    assert!(body["batch_size"].as_u64().is_some_and(|rows| (1..=16).contains(&rows)), "{body}");
    let parts = ["preprocess", "queue", "inference", "postprocess"]
        .iter()
        .map(|s| t[s].as_f64().unwrap())
        .sum::<f64>();
    assert!(parts <= t["total"].as_f64().unwrap() + 0.01, "stages fit in the total: {t}");
    body
}

#[test]
fn multipart_png_frames() {
    let server = &server();
    let frames = clips::png_frames(16, 320, 180).into_iter().map(|f| (f, "image/png")).collect();
    assert_classification(multipart(server, "/v1/classify", frames), 3, 16, 8);
}

#[test]
fn multipart_jpeg_frames_and_a_named_guest() {
    let server = &server();
    let frames = (0..3).map(|t| (clips::jpeg(&clips::frame(160, 90, t)), "image/jpeg")).collect();
    assert_classification(multipart(server, "/v1/guests/motion/classify?top_k=2", frames), 2, 3, 3);
}

#[test]
fn animated_gif() {
    let server = &server();
    assert_classification(
        post(server, "/v1/classify?top_k=5", "image/gif", clips::gif(12, 96, 64)),
        5,
        12,
        8,
    );
}

#[test]
fn y4m_stream() {
    let server = &server();
    let body = clips::y4m(42, 320, 180);
    assert_classification(post(server, "/v1/classify", "video/x-yuv4mpeg", body), 3, 42, 8);
}

#[test]
fn single_png_and_jpeg() {
    let server = &server();
    let frame = clips::frame(64, 48, 0);
    assert_classification(post(server, "/v1/classify?top_k=1", "image/png", clips::png(&frame)), 1, 1, 1);
    assert_classification(post(server, "/v1/classify", "image/jpeg", clips::jpeg(&frame)), 3, 1, 1);
}

#[test]
fn top_k_16_is_a_distribution_over_all_labels() {
    let server = &server();
    let body = assert_classification(
        post(server, "/v1/classify?top_k=16", "image/gif", clips::gif(5, 64, 64)),
        16,
        5,
        5,
    );
    let top = body["top_k"].as_array().unwrap();
    let mut labels: Vec<&str> = top.iter().map(|e| e["label"].as_str().unwrap()).collect();
    labels.sort();
    let mut expected = LABELS.to_vec();
    expected.sort();
    assert_eq!(labels, expected);
    let sum: f64 = top.iter().map(|e| e["score"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "scores sum to {sum}");
}

#[test]
fn the_same_clip_gets_the_same_answer() {
    let server = &server();
    let clip = clips::y4m(9, 64, 36);
    let a = json(post(server, "/v1/classify?top_k=16", "video/x-yuv4mpeg", clip.clone())).1;
    let b = json(post(server, "/v1/classify?top_k=16", "video/x-yuv4mpeg", clip)).1;
    assert_eq!(a["top_k"], b["top_k"]);
}

#[test]
fn bad_requests_get_their_status_and_code() {
    let server = &server();
    let png = clips::png(&clips::frame(32, 32, 0));
    let truncated_png = png[..png.len() / 2].to_vec();
    let huge_png = clips::png_header_claiming(100_000, 100_000);
    let boundary_body = b"--XYZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nabc".to_vec();

    // (path, content type, body, status, code, words in the message)
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16, &str, Vec<&str>)> = vec![
        ("/v1/classify?top_k=0", Some("image/png"), png.clone(), 400, "bad_request", vec!["top_k", "'0'"]),
        (
            "/v1/classify?top_k=17",
            Some("image/png"),
            png.clone(),
            400,
            "bad_request",
            vec!["1 to 16", "'17'"],
        ),
        ("/v1/classify?top_k=three", Some("image/png"), png.clone(), 400, "bad_request", vec!["'three'"]),
        ("/v1/classify", Some("image/png"), vec![0; 8_000_001], 413, "payload_too_large", vec!["8000000"]),
        (
            "/v1/classify",
            Some("video/webm"),
            b"\x1a\x45\xdf\xa3webm".to_vec(),
            415,
            "unsupported_media_type",
            vec!["video/webm", "video/mp4", "ffmpeg -i clip.webm -c:v libx264 -pix_fmt yuv420p clip.mp4"],
        ),
        (
            "/v1/classify",
            Some("video/mp4"),
            b"\0\0\0\x0cftypisom".to_vec(),
            422,
            "unprocessable_media",
            vec!["MP4", "no movie box (moov)"],
        ),
        (
            "/v1/classify",
            Some("text/plain"),
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
            vec!["text/plain", "video/x-yuv4mpeg"],
        ),
        ("/v1/classify", None, png.clone(), 415, "unsupported_media_type", vec!["no Content-Type"]),
        ("/v1/classify", Some("image/png"), truncated_png, 422, "unprocessable_media", vec!["PNG"]),
        (
            "/v1/classify",
            Some("image/png"),
            huge_png,
            422,
            "unprocessable_media",
            vec!["100000x100000", "limit"],
        ),
        ("/v1/classify", Some("image/gif"), b"GIF89a\x01".to_vec(), 422, "unprocessable_media", vec!["GIF"]),
        (
            "/v1/classify",
            Some("video/x-yuv4mpeg"),
            b"YUV4MPEG2 W16 H16 C420jpeg\n".to_vec(),
            422,
            "unprocessable_media",
            vec!["no frames"],
        ),
        (
            "/v1/classify",
            Some("video/x-yuv4mpeg"),
            b"YUV4MPEG W16 H16\nFRAME\n".to_vec(),
            422,
            "unprocessable_media",
            vec!["YUV4MPEG2"],
        ),
        ("/v1/classify", Some("multipart/form-data"), png.clone(), 400, "bad_request", vec!["boundary"]),
        (
            "/v1/classify",
            Some("multipart/form-data; boundary=XYZ"),
            boundary_body,
            400,
            "bad_request",
            vec!["multipart"],
        ),
        (
            "/v1/classify",
            Some("multipart/form-data; boundary=XYZ"),
            b"--XYZ--\r\n".to_vec(),
            400,
            "bad_request",
            vec!["no file parts"],
        ),
        (
            "/v1/guests/nope/classify",
            Some("image/png"),
            png.clone(),
            404,
            "not_found",
            vec!["'nope'", "motion"],
        ),
        ("/v3/nothing-here", Some("image/png"), png.clone(), 404, "not_found", vec!["no such route"]),
    ];
    for (path, content_type, body, status, code, words) in cases {
        let mut request = server.client().post(server.url(path)).body(body);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        let response = request.send().unwrap();
        let body = assert_error(response, status, code, &words);
        if status == 415 {
            assert!(body["error"]["accepted"].as_array().is_some_and(|a| a.len() >= 5), "{body}");
        }
    }
    let r = server.client().get(server.url("/v1/classify")).send().unwrap();
    assert_error(r, 405, "method_not_allowed", &[]);
    // Under /v2 the Open Inference Protocol's error shape holds, for unknown routes too.
    for (method, path, status) in
        [("POST", "/v2/nothing-here", 404), ("GET", "/v2/models/motion-resnet18/infer", 405)]
    {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (got, body) = json(server.client().request(method, server.url(path)).send().unwrap());
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // After all of that the server is still healthy and classifying.
    assert_eq!(json(server.get("/health")).0, 200);
    assert_classification(post(server, "/v1/classify", "image/png", png), 3, 1, 1);
}

#[test]
fn an_oversized_chunked_body_is_refused_while_streaming() {
    let server = &server();
    // No Content-Length: the limit must hold while the body streams in.
    let chunks = (0..100).map(|_| Ok::<_, std::io::Error>(vec![0u8; 100_000]));
    let body = reqwest::blocking::Body::new(ChunkReader { chunks: Box::new(chunks), current: Vec::new() });
    let r = server
        .client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(body)
        .send();
    match r {
        Ok(r) => {
            assert_error(r, 413, "payload_too_large", &["8000000"]);
        }
        // The server may answer and close before the client finishes sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
}

struct ChunkReader {
    chunks: Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send>,
    current: Vec<u8>,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            match self.chunks.next() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.drain(..n);
        Ok(n)
    }
}

/// A guest that runs out of memory or time fails its own request with the limit named, and the
/// host keeps serving.
#[test]
fn guest_faults_and_timeouts_are_contained() {
    // 4096×4096 is within the guest's own size limits, but decoding it needs far more than
    // 64 MiB of guest memory, and decoding and resizing eight such frames takes far longer than
    // 1 s (two took 530-1,450 ms on 2-core machines). Both limits leave room for validation's
    // 8 MiB samples (at most 52 MiB, for the 2560×1920 JPEG, and ~300 ms).
    let big = clips::png(&clips::frame(4096, 4096, 0));
    let small = clips::png(&clips::frame(32, 32, 0));

    let server = ServerBuilder::new().arg("--guest-memory-bytes=67108864").start();
    let r = post(&server, "/v1/classify", "image/png", big.clone());
    assert_error(r, 500, "guest_fault", &["motion", "memory limit is 64 MiB", "--guest-memory-bytes"]);
    assert_eq!(json(server.get("/health")).0, 200);
    assert_classification(post(&server, "/v1/classify", "image/png", small.clone()), 3, 1, 1);
    drop(server);

    let server = ServerBuilder::new().arg("--guest-deadline=1s").start();
    let frames = (0..8).map(|i| (clips::png(&clips::frame(4096, 4096, i)), "image/png")).collect();
    let r = multipart(&server, "/v1/classify", frames);
    assert_error(r, 504, "guest_timeout", &["motion", "deadline of 1000 ms"]);
    assert_eq!(json(server.get("/health")).0, 200);
    assert_classification(post(&server, "/v1/classify", "image/png", small), 3, 1, 1);
}

/// Each thread of the server: its name and nice value, from /proc.
fn thread_priorities(server: &Server) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // The name is in parentheses and may hold spaces; the fields after it are plain.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            // After the name: state is field 3, nice is field 19.
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

#[test]
fn guest_code_runs_below_the_priority_of_the_forward_pass() {
    let server = ServerBuilder::new().tls().arg("--guest-nice=7").start();
    let response = post(&server, "/v1/classify", "video/x-yuv4mpeg", clips::y4m(16, 160, 90));
    assert_eq!(response.status(), 200);
    let threads = thread_priorities(&server);
    let inference: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("infer-")).collect();
    assert!(!inference.is_empty(), "no inference thread among {threads:?}");
    assert!(inference.iter().all(|(_, nice)| *nice == 0), "inference threads lowered: {threads:?}");
    // The threads that ran the guest (its validation at start and this request) were lowered.
    assert!(threads.iter().any(|(_, nice)| *nice == 7), "no thread at nice 7: {threads:?}");
    assert!(threads.iter().all(|(_, nice)| [0, 7].contains(nice)), "{threads:?}");

    let server = ServerBuilder::new().tls().arg("--guest-nice=0").start();
    assert_eq!(post(&server, "/v1/classify", "video/x-yuv4mpeg", clips::y4m(16, 160, 90)).status(), 200);
    let threads = thread_priorities(&server);
    assert!(threads.iter().all(|(_, nice)| *nice == 0), "--guest-nice=0 lowers nothing: {threads:?}");
}

/// Whether the server's environment holds `entry` (`NAME=value`), from /proc.
fn environment_has(server: &Server, entry: &str) -> bool {
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    environ.split(|b| *b == 0).any(|e| e == entry.as_bytes())
}

#[test]
fn the_forward_pass_spins_briefly_and_runs_optimised_unless_the_operator_says_otherwise() {
    // libgomp reads GOMP_SPINCOUNT as it loads, so the server starts itself again with it set;
    // the same process, with the same arguments, serves.
    let server = ServerBuilder::new().tls().start();
    assert!(environment_has(&server, "GOMP_SPINCOUNT=10000"), "{}", server.log());
    assert_eq!(post(&server, "/v1/classify", "video/x-yuv4mpeg", clips::y4m(16, 160, 90)).status(), 200);
    // Started again through /proc/self/exe, it still goes by its own name (ps, pgrep, killall).
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap();
    assert_eq!(comm.trim_end(), "motion-host");
    // On the CPU at fp32 the model runs frozen and optimised for inference, unless told not to.
    assert!(server.log().contains(r#""optimised":true"#), "{}", server.log());

    let server = ServerBuilder::new().tls().env("GOMP_SPINCOUNT", "300000").arg("--plain-model").start();
    assert!(environment_has(&server, "GOMP_SPINCOUNT=300000"));
    assert!(!environment_has(&server, "GOMP_SPINCOUNT=10000"));
    assert!(server.log().contains(r#""optimised":false"#), "{}", server.log());
    assert_eq!(post(&server, "/v1/classify", "video/x-yuv4mpeg", clips::y4m(16, 160, 90)).status(), 200);
}
