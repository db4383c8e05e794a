//! What operators see: Prometheus `/metrics` (read with the real exposition-format parser),
//! request ids, one JSON access line per request, guest output tagged with guest and request,
//! the OpenAPI description checked against the running server by schemathesis, and guest code
//! named for perf.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use motion_host_tests::{
    ADMIN_TOKEN, LABELS, Server, ServerBuilder, default_model_version, json, repo_root, test_guest,
    test_python,
};
use serde_json::Value;

fn clip() -> Vec<u8> {
    std::fs::read(repo_root().join("tests/clips/pan_left.gif")).unwrap()
}

fn classify(
    server: &Server,
    path: &str,
    body: Vec<u8>,
    request_id: Option<&str>,
) -> reqwest::blocking::Response {
    let mut request = server.client().post(server.url(path)).header("content-type", "image/gif").body(body);
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    request.send().unwrap()
}

fn hostile(server: &Server, command: &str, request_id: &str) -> u16 {
    let r = server
        .client()
        .post(server.url("/v1/guests/hostile/classify"))
        .header("content-type", "text/plain")
        .header("x-request-id", request_id)
        .body(command.to_string())
        .send()
        .unwrap();
    r.status().as_u16()
}

fn put_guest(server: &Server, name: &str, guest: &str) -> u16 {
    let bytes = std::fs::read(test_guest(guest)).unwrap();
    let r = server
        .client()
        .put(server.url(&format!("/admin/guests/{name}")))
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .send()
        .unwrap();
    r.status().as_u16()
}

/// The families parsed by prometheus_client, after its convention checks.
fn scrape(server: &Server) -> Value {
    let response = server.get("/metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().unwrap();
    let mut child = Command::new(test_python())
        .arg(repo_root().join("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["families"].clone()
}

/// The value of `sample` with exactly these labels (among others), if present.
fn value(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples = families[family]["samples"].as_array()?;
    samples
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .map(|s| s[2].as_f64().unwrap())
}

fn log_lines(server: &Server) -> Vec<Value> {
    server
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn metrics_logs_and_request_ids_report_what_happened() {
    let server = ServerBuilder::new()
        .admin_token()
        .arg(&format!("--guest=hostile={}", test_guest("hostile").display()))
        .arg("--guest-deadline=1500ms")
        .start();

    // Request ids: a usable one is kept and echoed, anything else replaced by a fresh UUID.
    let r = classify(&server, "/v1/classify", clip(), Some("obs-1"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "obs-1");
    let r = classify(&server, "/v1/classify", clip(), Some("has spaces and {braces}"));
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let r = server.get("/no/such/route");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"].len(), 36);
    assert_eq!(classify(&server, "/v1/classify", b"GIF89a broken".to_vec(), Some("obs-bad")).status(), 422);

    // Guest failures of each kind, a rejected guest and a swap.
    assert_eq!(hostile(&server, "panic", "obs-trap"), 500);
    assert_eq!(hostile(&server, "memory", "obs-memory"), 500);
    assert_eq!(hostile(&server, "loop", "obs-loop"), 504);
    assert_eq!(hostile(&server, "stdout-flood", "obs-flood"), 200);
    assert_eq!(put_guest(&server, "broken", "hostile-trap-info"), 422);
    assert_eq!(put_guest(&server, "motion", "motion-reversed"), 200);
    assert_eq!(classify(&server, "/v1/classify", clip(), Some("obs-2")).status(), 200);

    let m = scrape(&server);
    let requests = |route: &str, status: &str| {
        value(
            &m,
            "motion_host_http_requests",
            "motion_host_http_requests_total",
            &[("route", route), ("method", "POST"), ("status", status)],
        )
    };
    assert_eq!(m["motion_host_http_requests"]["type"], "counter");
    assert_eq!(requests("/v1/classify", "200"), Some(3.0));
    assert_eq!(requests("/v1/classify", "422"), Some(1.0));
    assert_eq!(requests("/v1/guests/{name}/classify", "500"), Some(2.0));
    let unmatched =
        value(&m, "motion_host_http_requests", "motion_host_http_requests_total", &[("route", "unmatched")]);
    assert_eq!(unmatched, Some(1.0), "unknown paths share one label value");
    assert!(
        value(&m, "motion_host_http_requests_in_flight", "motion_host_http_requests_in_flight", &[]).unwrap()
            >= 1.0
    );
    assert_eq!(m["motion_host_http_request_duration_seconds"]["type"], "histogram");

    for stage in ["queue", "preprocess", "inference", "postprocess", "total"] {
        let count = value(
            &m,
            "motion_host_stage_duration_seconds",
            "motion_host_stage_duration_seconds_count",
            &[("stage", stage), ("guest", "motion"), ("model", "motion-resnet18")],
        );
        assert_eq!(count, Some(3.0), "{stage}");
    }
    let batches = value(
        &m,
        "motion_host_inference_batch_size",
        "motion_host_inference_batch_size_count",
        &[("model", "motion-resnet18")],
    );
    assert!(batches.unwrap() >= 3.0, "a forward pass per classification at least: {batches:?}");

    let guest = |family: &str, labels: &[(&str, &str)]| value(&m, family, &format!("{family}_total"), labels);
    assert_eq!(guest("motion_host_guest_traps", &[("guest", "hostile")]), Some(1.0));
    assert_eq!(guest("motion_host_guest_timeouts", &[("guest", "hostile")]), Some(1.0));
    assert_eq!(
        guest("motion_host_guest_limit_hits", &[("guest", "hostile"), ("limit", "memory")]),
        Some(1.0)
    );
    assert_eq!(guest("motion_host_guest_validation_failures", &[("guest", "broken")]), Some(1.0));
    assert_eq!(
        guest("motion_host_guest_swaps", &[("guest", "motion")]),
        Some(2.0),
        "start-up install and the swap"
    );

    // Info gauges follow the swap: the old version is gone.
    let info = m["motion_host_guest_info"]["samples"].as_array().unwrap();
    let motion: Vec<&Value> = info.iter().filter(|s| s[1]["guest"] == "motion").collect();
    assert_eq!(motion.len(), 1, "{motion:?}");
    assert_eq!(motion[0][1]["version"], "0.1.0-reversed");
    assert_eq!(motion[0][1]["default"], "true");
    assert!(motion[0][1]["digest"].as_str().unwrap().starts_with("sha256:"));
    let version = default_model_version();
    let model = value(
        &m,
        "motion_host_model_info",
        "motion_host_model_info",
        &[
            ("model", "motion-resnet18"),
            ("version", version.as_str()),
            ("device", "cpu"),
            ("precision", "fp32"),
        ],
    );
    assert_eq!(model, Some(1.0));

    // Logs: JSON lines; one access line per request, with the id, route, guest and stages.
    let lines = log_lines(&server);
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    let with_id = |id: &str| -> Vec<&Value> {
        access.iter().copied().filter(|l| l["span"]["request_id"] == id).collect()
    };
    let first = with_id("obs-1");
    assert_eq!(first.len(), 1, "{first:?}");
    let line = first[0];
    assert_eq!(line["route"], "/v1/classify");
    assert_eq!(line["status"], 200);
    assert_eq!(line["guest"], "motion");
    assert_eq!(line["guest_version"], "0.1.0");
    for field in ["queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"] {
        assert!(line[field].as_f64().is_some(), "{field} in {line}");
    }
    assert_eq!(with_id("obs-2")[0]["guest_version"], "0.1.0-reversed");
    assert_eq!(with_id(&generated).len(), 1);
    assert_eq!(with_id("obs-bad")[0]["code"], "unprocessable_media");
    assert_eq!(with_id("obs-trap")[0]["code"], "guest_fault");

    // Guest output: tagged with the guest and the request, and cut to its limit.
    let output: Vec<&Value> = lines.iter().filter(|l| l["message"] == "guest output").collect();
    let flood =
        output.iter().find(|l| l["span"]["request_id"] == "obs-flood").expect("the flood's output is logged");
    assert_eq!(flood["guest"], "hostile");
    assert!(flood["dropped_bytes"].as_u64().unwrap() > 0, "{flood}");
    assert!(flood["output"].as_str().unwrap().len() <= 16 * 1024, "size-limited");
    let trap = lines.iter().find(|l| l["message"] == "guest trapped").expect("the trap is logged");
    assert_eq!(trap["span"]["request_id"], "obs-trap");
    assert_eq!(json(server.get("/health")).0, 200);
}

#[test]
fn the_openapi_description_matches_the_running_server() {
    let builder = ServerBuilder::new().tls();
    let ca = builder.dir().join("server.crt");
    let server = builder.start();
    let (status, doc) = json(server.get("/openapi.json"));
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["parameters"]["Model"]["schema"]["enum"],
        serde_json::json!(["motion-resnet18", "motion-classifier"])
    );
    // The labels come from the live default guest: the host's document names none.
    let example = &doc["components"]["schemas"]["ClassifyResponse"]["examples"][0];
    assert_eq!(example["label"], LABELS[0], "{example}");
    let described = doc["paths"]["/v2/models/{model}"]["get"]["description"].as_str().unwrap();
    let listed = LABELS.map(|l| format!("`{l}`")).join(", ");
    assert!(described.contains(&listed), "{described}");

    // Every documented operation but the admin API (off here) is exercised with examples,
    // boundary values and fuzzed data; each answer must match its documented status, headers
    // and schema, invalid input must be refused, and nothing may answer 5xx. Positive-data
    // acceptance is left out: schema-valid bytes are rarely a decodable clip.
    let schemathesis = test_python().with_file_name("schemathesis");
    let report = tempfile::tempdir().unwrap();
    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--tls-verify", ca.to_str().unwrap()])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--exclude-path-regex", "^/admin/"])
        .args(["--max-examples", "20", "--workers", "1", "--seed", "1", "--request-timeout", "30"])
        .args(["--report", "junit", "--report-dir"])
        .arg(report.path())
        .env("NO_COLOR", "1")
        // Its cache of found failures goes there too, not into the source tree.
        .current_dir(report.path())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    let tested = stdout.lines().find(|l| l.trim_start().starts_with("Tested:")).unwrap_or_default();
    assert!(tested.contains("21"), "every non-admin operation was tested: {tested}\n{stdout}");
}

/// Removes a file when dropped, so a failed assertion leaves nothing behind in /tmp.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The guest functions a perf map lists: lines of `START SIZE NAME`, both numbers hex, named as
/// wasmtime names a function of a core module in the component.
fn guest_functions(map: &str) -> Vec<&str> {
    map.lines()
        .filter(|line| {
            let mut fields = line.splitn(3, ' ');
            let (Some(start), Some(size), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
                return false;
            };
            let start = u64::from_str_radix(start.trim_start_matches("0x"), 16);
            let size = u64::from_str_radix(size, 16);
            start.is_ok_and(|s| s > 0) && size.is_ok_and(|s| s > 0) && name.starts_with("wasm[")
        })
        .collect()
}

#[test]
fn guest_code_is_named_for_perf_only_when_asked() {
    let server = ServerBuilder::new().arg("--guest-profiler=perfmap").start();
    let map = PathBuf::from(format!("/tmp/perf-{}.map", server.pid()));
    let _removed = Removed(map.clone());
    assert_eq!(classify(&server, "/v1/classify", clip(), None).status(), 200);
    let listed =
        std::fs::read_to_string(&map).unwrap_or_else(|e| panic!("{}: {e}\n{}", map.display(), server.log()));
    let functions = guest_functions(&listed);
    // The default guest compiles to over a thousand functions; its decoders alone are hundreds.
    let head: Vec<&str> = listed.lines().take(20).collect();
    assert!(
        functions.len() > 500,
        "{} guest functions in {}, which begins:\n{}",
        functions.len(),
        map.display(),
        head.join("\n")
    );
    let started = log_lines(&server)
        .into_iter()
        .find(|l| l["message"] == "guest functions are listed for profilers")
        .unwrap_or_else(|| panic!("no line names the map file:\n{}", server.log()));
    assert_eq!(started["file"], map.display().to_string());

    let plain = ServerBuilder::new().start();
    assert_eq!(classify(&plain, "/v1/classify", clip(), None).status(), 200);
    let unasked = format!("/tmp/perf-{}.map", plain.pid());
    let _removed = Removed(PathBuf::from(&unasked));
    assert!(!Path::new(&unasked).exists(), "{unasked} written without --guest-profiler");
}
