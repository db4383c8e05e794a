//! Traffic control against the real server: clients that hang up (HTTP/1.1 and HTTP/2) stop
//! their work in whatever stage it was, requests carry their own deadlines, and neither leaves
//! rows in a forward pass, a slot, a store or memory behind. Counts are asserted, not timings.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use motion_host_tests::{Server, ServerBuilder, assert_error, json, test_guest};

const MODEL: &str = "motion-resnet18";
const ROW_BYTES: usize = 8 * 112 * 112 * 4;

fn hostile() -> String {
    format!("hostile={}", test_guest("hostile").display())
}

/// What the server reports about the work it did and gave up.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    cancelled: [f64; 4],
    deadline: [f64; 4],
    rows: f64,
    passes: f64,
}

const STAGES: [&str; 4] = ["body", "guest", "queue", "inference"];

impl Counts {
    fn of(server: &Server) -> Counts {
        let by_stage = |family: &str| {
            STAGES.map(|stage| server.metric(&format!("motion_host_{family}_total{{stage=\"{stage}\"}}")))
        };
        let batch = |what: &str| {
            server.metric(&format!("motion_host_inference_batch_size_{what}{{model=\"{MODEL}\"}}"))
        };
        Counts {
            cancelled: by_stage("requests_cancelled"),
            deadline: by_stage("requests_deadline_exceeded"),
            rows: batch("sum"),
            passes: batch("count"),
        }
    }

    fn since(self, before: Counts) -> Counts {
        let minus = |a: [f64; 4], b: [f64; 4]| [0, 1, 2, 3].map(|i| a[i] - b[i]);
        Counts {
            cancelled: minus(self.cancelled, before.cancelled),
            deadline: minus(self.deadline, before.deadline),
            rows: self.rows - before.rows,
            passes: self.passes - before.passes,
        }
    }
}

/// An HTTP/1.1 request as bytes, its body whole or (with `declared` larger) cut short.
fn request(path: &str, content_type: &str, body: &[u8], declared: usize) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {declared}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A client that sends `request` and closes its connection `after` later, without reading.
fn hang_up_after(addr: SocketAddr, request: Vec<u8>, after: Duration) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&request).unwrap();
        std::thread::sleep(after);
    })
}

fn post_text(server: &Server, path: &str, text: &str) -> JoinHandle<(u16, serde_json::Value)> {
    let (client, url, text) = (server.client(), server.url(path), text.to_string());
    std::thread::spawn(move || {
        json(client.post(url).header("content-type", "text/plain").body(text).send().unwrap())
    })
}

/// The least resident memory over 1.5 s: what the server holds once its allocator settles.
fn settled_rss_kib(server: &Server) -> u64 {
    (0..6)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(250));
            server.rss_kib()
        })
        .min()
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_that_hang_up_stop_their_work_in_every_stage_and_the_others_are_served() {
    // A batch waits up to 5 s for a request that announced a model call, so rows that arrive
    // while such a request sleeps in its guest wait in the queue, deterministically.
    let server =
        ServerBuilder::new().guest(&hostile()).arg("--max-batch-delay=5s").arg("--max-batch-size=16").start();
    let addr = server.addresses()[0];
    for _ in 0..3 {
        assert_eq!(post_text(&server, "/v1/classify", "warm").join().unwrap().0, 200);
    }
    let rss_before = settled_rss_kib(&server);
    let fds_before = server.open_descriptors();
    let before = Counts::of(&server);

    let announced = post_text(&server, "/v1/classify", "sleep 3000");
    std::thread::sleep(Duration::from_millis(300));
    let hang_up = Duration::from_secs(1);
    let mut gone = Vec::new();
    // Queue: rows that wait for the batch the sleeping request holds open.
    for _ in 0..4 {
        gone.push(hang_up_after(addr, request("/v1/classify", "text/plain", b"honest", 6), hang_up));
    }
    // Guest: requests whose guest sleeps 10 s.
    for _ in 0..3 {
        gone.push(hang_up_after(addr, request("/v1/classify", "text/plain", b"sleep 10000", 11), hang_up));
    }
    // Body: uploads that stop halfway.
    for _ in 0..2 {
        gone.push(hang_up_after(addr, request("/v1/classify", "image/png", &[0u8; 1000], 100_000), hang_up));
    }
    // HTTP/2: the client gives up on its stream (RST_STREAM) and keeps the connection.
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .timeout(hang_up)
        .build()
        .unwrap();
    for _ in 0..2 {
        let (client, url) = (h2.clone(), server.url("/v1/classify"));
        gone.push(std::thread::spawn(move || {
            let sent = client.post(url).header("content-type", "text/plain").body("sleep 10000").send();
            assert!(sent.is_err_and(|e| e.is_timeout()), "the HTTP/2 client was to give up");
        }));
    }
    // Bystanders classify meanwhile.
    let bystanders: Vec<_> = (0..4).map(|_| post_text(&server, "/v1/classify", "honest")).collect();
    for client in gone {
        client.join().unwrap();
    }
    let bystanders: Vec<_> = bystanders.into_iter().map(|b| b.join().unwrap()).collect();
    let (status, answer) = announced.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    for (status, answer) in &bystanders {
        assert_eq!(*status, 200, "a bystander failed: {answer}");
    }

    // Everything given up is gone: slots, stores, memory and descriptors.
    wait_until("the in-flight gauge to fall back", || {
        server.metric("motion_host_http_requests_in_flight") == 1.0 // this scrape
    });
    assert_eq!(server.metric("motion_host_guest_stores_open"), 0.0);
    let counts = Counts::of(&server).since(before);
    assert_eq!(
        counts.cancelled,
        [2.0, 5.0, 4.0, 0.0],
        "cancellations by stage (body, guest, queue, inference)"
    );
    assert_eq!(counts.deadline, [0.0; 4]);
    // Every row that ran belongs to a request that was answered: the sleeping one and the
    // bystanders, one row each. The queued rows of those who left never ran.
    assert_eq!((counts.passes, counts.rows), (1.0, 5.0), "forward passes and their rows: {counts:?}");
    assert_eq!(answer["batch_size"], 5, "{answer}");
    let log = server.log();
    let lines = log.lines().filter(|l| l.contains("request cancelled: the client went away")).count();
    assert_eq!(lines, 11, "one log line per cancellation");
    drop(h2);
    wait_until(&format!("descriptors to fall back to {fds_before}"), || {
        server.open_descriptors() <= fds_before
    });
    let rss_after = settled_rss_kib(&server);
    assert!(
        rss_after <= rss_before + rss_before / 10,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A `/v2` raw inference of `rows` rows with the binary tensor extension, with its own
/// `timeout` parameter when given.
fn raw_infer(server: &Server, rows: usize, timeout_us: Option<&str>) -> JoinHandle<(u16, serde_json::Value)> {
    let parameters = timeout_us.map(|t| format!(",\"parameters\":{{\"timeout\":{t}}}")).unwrap_or_default();
    let header = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[{rows},8,112,112],\"datatype\":\"FP32\",\
         \"parameters\":{{\"binary_data_size\":{}}}}}]{parameters}}}",
        rows * ROW_BYTES
    );
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, rows * ROW_BYTES));
    let (client, url) = (server.client(), server.url(&format!("/v2/models/{MODEL}/infer")));
    std::thread::spawn(move || {
        let response = client
            .post(url)
            .header("inference-header-content-length", header.len())
            .body(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().unwrap();
        let header = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, header)
    })
}

#[test]
fn a_request_whose_deadline_passes_in_a_saturated_queue_gets_504_and_its_rows_never_run() {
    // One row per pass on one thread: 32-row calls keep the model busy for a while each.
    let server =
        ServerBuilder::new().guest(&hostile()).arg("--max-batch-size=1").arg("--max-batch-delay=0s").start();
    assert_eq!(raw_infer(&server, 1, None).join().unwrap().0, 200);

    // Malformed deadlines are refused, naming what is wrong.
    let malformed = server
        .client()
        .post(server.url("/v1/classify"))
        .header("content-type", "text/plain")
        .header("x-request-timeout", "soon")
        .body("honest")
        .send()
        .unwrap();
    assert_error(malformed, 400, "bad_request", &["X-Request-Timeout", "'soon'"]);
    for bad in ["\"later\"", "-5", "1.5"] {
        let (status, body) = raw_infer(&server, 1, Some(bad)).join().unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("parameter 'timeout'"), "{body}");
    }

    let before = Counts::of(&server);
    let busy: Vec<_> = (0..6).map(|_| raw_infer(&server, 32, None)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut late = Vec::new();
    for _ in 0..3 {
        late.push(raw_infer(&server, 1, Some("100000")));
        let (client, url) = (server.client(), server.url("/v1/classify"));
        late.push(std::thread::spawn(move || {
            let response = client
                .post(url)
                .header("content-type", "text/plain")
                .header("x-request-timeout", "0.1")
                .body("honest")
                .send()
                .unwrap();
            json(response)
        }));
    }
    for (status, body) in late.into_iter().map(|l| l.join().unwrap()) {
        assert_eq!(status, 504, "{body}");
        let message = body["error"]["message"].as_str().or(body["error"].as_str()).unwrap().to_string();
        assert!(message.contains("0.1 s"), "{message}");
    }
    for (status, body) in busy.into_iter().map(|b| b.join().unwrap()) {
        assert_eq!(status, 200, "{body}");
    }
    let counts = Counts::of(&server).since(before);
    assert_eq!(counts.deadline.iter().sum::<f64>(), 6.0, "{counts:?}");
    assert!(counts.deadline[2] >= 3.0, "the raw calls' deadlines pass in the queue: {counts:?}");
    assert_eq!((counts.passes, counts.rows), (6.0, 6.0 * 32.0), "only the calls answered ran: {counts:?}");
    assert_eq!(counts.cancelled, [0.0; 4]);
}

fn admin(server: &Server, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
    server.client().request(method, server.url(path)).bearer_auth(motion_host_tests::ADMIN_TOKEN)
}

fn put_canary(server: &Server, percent: &str) -> reqwest::blocking::Response {
    let wasm = std::fs::read(test_guest("hostile-fail-marked")).unwrap();
    admin(server, reqwest::Method::PUT, &format!("/admin/guests/hostile?canary={percent}"))
        .body(wasm)
        .send()
        .unwrap()
}

/// One classification with the hostile guest: the status, the version that answered
/// (`X-Guest-Digest`) and the body.
fn classify(server: &Server, text: &str, pin: Option<&str>) -> (u16, String, serde_json::Value) {
    let mut request = server
        .client()
        .post(server.url("/v1/guests/hostile/classify"))
        .header("content-type", "text/plain")
        .body(text.to_string());
    if let Some(digest) = pin {
        request = request.header("x-guest-digest", digest);
    }
    let response = request.send().unwrap();
    let digest = response.headers().get("x-guest-digest").map_or("", |v| v.to_str().unwrap()).to_string();
    let (status, body) = json(response);
    (status, digest, body)
}

/// The sample of `/metrics` whose line holds every one of `parts`.
fn sample(server: &Server, parts: &[&str]) -> f64 {
    let text = server.get("/metrics").text().unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn guests(server: &Server) -> serde_json::Value {
    json(admin(server, reqwest::Method::GET, "/admin/guests").send().unwrap()).1["guests"][0].clone()
}

#[test]
fn a_canary_that_fails_is_rolled_back_by_itself_while_the_live_version_serves() {
    let server = ServerBuilder::new().guest(&hostile()).admin_token().arg("--canary-min-requests=20").start();
    let live = guests(&server)["digest"].as_str().unwrap().to_string();

    for (percent, status) in [("0", 400), ("100", 400), ("half", 400)] {
        assert_error(put_canary(&server, percent), status, "bad_request", &["canary", "1 to 99"]);
    }
    let (status, entry) = json(put_canary(&server, "50"));
    assert_eq!(status, 200, "{entry}");
    let canary = entry["canary"]["digest"].as_str().unwrap().to_string();
    assert_ne!(canary, live);
    assert_eq!(
        (entry["digest"].as_str(), entry["canary"]["percent"].as_u64()),
        (Some(live.as_str()), Some(50))
    );
    let health = server.get("/health").json::<serde_json::Value>().unwrap();
    assert_eq!(health["guests"]["hostile"]["canary"]["digest"], canary.as_str(), "{health}");
    let public = server.get("/v1/guests").json::<serde_json::Value>().unwrap();
    assert_eq!(public["guests"][0]["canary"]["percent"], 50, "{public}");

    // A client may pin either version, outside the trial; another digest is 404.
    assert_eq!(classify(&server, "marked", Some(&live)).0, 200);
    let (status, digest, body) = classify(&server, "marked", Some(&canary));
    assert_eq!(
        (status, digest.as_str(), body["error"]["code"].as_str()),
        (500, canary.as_str(), Some("guest_fault"))
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (status, _, body) = classify(&server, "honest", Some(&unknown));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&live), "{body}");
    assert_eq!(
        guests(&server)["canary"]["trial"]["canary"]["requests"],
        0,
        "pinned requests are not in the trial"
    );

    // Mixed traffic: every other request is marked, which only the canary fails.
    let answers: Vec<_> = (0..4)
        .map(|client| {
            let (http, url) = (server.client(), server.url("/v1/guests/hostile/classify"));
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let text = if (i + client) % 2 == 0 { "marked" } else { "honest" };
                        let r = http
                            .post(url.as_str())
                            .header("content-type", "text/plain")
                            .body(text)
                            .send()
                            .unwrap();
                        let digest = r.headers()["x-guest-digest"].to_str().unwrap().to_string();
                        (r.status().as_u16(), digest)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|t| t.join().unwrap())
        .collect();
    let by = |digest: &str| answers.iter().filter(|(_, d)| d == digest).collect::<Vec<_>>();
    let (from_live, from_canary) = (by(&live), by(&canary));
    assert_eq!(from_live.len() + from_canary.len(), answers.len());
    assert!(from_live.iter().all(|(s, _)| *s == 200), "the live version failed a request");
    assert!(from_canary.iter().any(|(s, _)| *s == 500), "the canary never failed");
    let canary_requests = from_canary.len();
    assert!(
        (20..=40).contains(&canary_requests),
        "the canary answered {canary_requests} of {}",
        answers.len()
    );

    // It was removed by itself, once, with an audit line naming both rates.
    let entry = guests(&server);
    assert!(entry.get("canary").is_none(), "{entry}");
    assert_eq!(entry["digest"], live.as_str());
    let ended = ["guest_canaries_ended_total", "automatic=\"true\"", "outcome=\"rolled_back\""];
    assert_eq!(sample(&server, &ended), 1.0);
    let log = server.log();
    let audit: Vec<_> = log.lines().filter(|l| l.contains("\"canary-rollback\"")).collect();
    assert_eq!(audit.len(), 1, "{log}");
    assert!(
        audit[0].contains("canary_failure_rate") && audit[0].contains("live_failure_rate"),
        "{}",
        audit[0]
    );
    // Per-version metrics: the canary's faults are its own.
    let canary_label = format!("digest=\"{canary}\"");
    let live_label = format!("digest=\"{live}\"");
    assert!(sample(&server, &["guest_version_requests_total", &canary_label, "code=\"guest_fault\""]) >= 1.0);
    assert_eq!(sample(&server, &["guest_version_requests_total", &live_label, "code=\"guest_fault\""]), 0.0);
    assert!(sample(&server, &["guest_version_request_duration_seconds_count", &live_label]) >= 40.0);
    // Everything goes to the live version now.
    assert_eq!(classify(&server, "marked", None).0, 200);
}

#[test]
fn a_healthy_canary_is_promoted_by_hand_or_by_the_flag_and_rollback_removes_one() {
    let server = ServerBuilder::new().guest(&hostile()).admin_token().start();
    let first = guests(&server)["digest"].as_str().unwrap().to_string();
    let post = |path: &str| json(admin(&server, reqwest::Method::POST, path).send().unwrap());
    let (status, body) = post("/admin/guests/hostile/promote");
    assert_eq!(status, 409, "no canary to promote: {body}");
    let unknown = json(
        admin(&server, reqwest::Method::PUT, "/admin/guests/nobody?canary=10")
            .body(std::fs::read(test_guest("hostile")).unwrap())
            .send()
            .unwrap(),
    );
    assert_eq!(unknown.0, 409, "a canary needs a live version: {}", unknown.1);

    // Rollback with a canary removes the canary and keeps the live version.
    let canary = json(put_canary(&server, "30")).1["canary"]["digest"].as_str().unwrap().to_string();
    let (status, entry) = post("/admin/guests/hostile/rollback");
    assert_eq!((status, entry["digest"].as_str()), (200, Some(first.as_str())), "{entry}");
    assert!(entry.get("canary").is_none(), "{entry}");

    // Promoted by hand: the canary is live, the old version is history, rollback returns to it.
    assert_eq!(json(put_canary(&server, "30")).0, 200);
    let digests: Vec<String> = (0..100)
        .map(|_| classify(&server, "honest", None))
        .map(|(s, d, _)| {
            assert_eq!(s, 200);
            d
        })
        .collect();
    assert_eq!(digests.iter().filter(|d| **d == canary).count(), 30, "30% of 100 requests");
    let (status, entry) = post("/admin/guests/hostile/promote");
    assert_eq!((status, entry["digest"].as_str()), (200, Some(canary.as_str())), "{entry}");
    assert_eq!(entry["history"][0]["digest"], first.as_str());
    assert_eq!(
        sample(&server, &["guest_canaries_ended_total", "automatic=\"false\"", "outcome=\"promoted\""]),
        1.0
    );
    assert_eq!(post("/admin/guests/hostile/rollback").1["digest"], first.as_str());
    drop(server);

    // Promoted by the flag once it has answered enough requests within the rate.
    let server = ServerBuilder::new()
        .guest(&hostile())
        .admin_token()
        .arg("--canary-min-requests=10")
        .arg("--canary-auto-promote-after=10")
        .start();
    assert_eq!(json(put_canary(&server, "50")).0, 200);
    // Of the first 100 requests, 50 reach the canary: it is promoted on its tenth.
    for _ in 0..100 {
        assert_eq!(classify(&server, "honest", None).0, 200);
    }
    let entry = guests(&server);
    assert_eq!(entry["digest"], canary.as_str(), "{entry}");
    assert!(entry.get("canary").is_none(), "{entry}");
    assert!(server.log().contains("\"canary-promote\""));
    assert_eq!(
        sample(&server, &["guest_canaries_ended_total", "automatic=\"true\"", "outcome=\"promoted\""]),
        1.0
    );
}
