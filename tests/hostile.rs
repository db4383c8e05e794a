//! Hostile guests: each attack of `tests/guests/hostile` runs while a well-behaved client keeps
//! classifying through the default guest. The attack gets its own error naming the limit or
//! trap, the bystander sees no failure, `/health` stays healthy, and resident memory does not
//! grow from one round of attacks to the next.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use motion_host_tests::{ADMIN_TOKEN, Server, ServerBuilder, assert_error, clips, json, test_guest};

/// One attack: the command posted to the hostile guest, and what must come back.
struct Attack {
    command: String,
    status: u16,
    code: &'static str,
    words: Vec<&'static str>,
}

fn attack(command: impl Into<String>, status: u16, code: &'static str, words: &[&'static str]) -> Attack {
    Attack { command: command.into(), status, code, words: words.to_vec() }
}

fn attacks(closed_port: u16) -> Vec<Attack> {
    vec![
        attack("loop", 504, "guest_timeout", &["hostile", "deadline of 1500 ms"]),
        attack("memory", 500, "guest_fault", &["memory limit is 256 MiB", "--guest-memory-bytes"]),
        attack("recursion", 500, "guest_fault", &["trapped", "wasm trap"]),
        attack("panic", 500, "guest_fault", &["trapped", "unreachable"]),
        attack("huge-tensor", 500, "guest_fault", &["33554432 bytes", "--guest-max-transfer-bytes"]),
        attack("nn-bytes", 500, "guest_fault", &["67108864 bytes of tensors", "--guest-max-nn-bytes"]),
        attack("wrong-shape", 500, "guest_fault", &["could not run the model", "[1, 3, 224, 224]"]),
        attack("wrong-type", 500, "guest_fault", &["could not run the model", "must be FP32"]),
        attack("load-spam", 500, "guest_fault", &["more than 100 wasi:nn calls", "--guest-max-nn-calls"]),
        attack("no-model", 500, "guest_fault", &["no model named 'no-such-model'"]),
        attack("nan", 500, "guest_fault", &["invalid result", "NaN"]),
        // A 10 MiB label plus the honest answer's other labels, whose names depend on the model.
        attack("big-label", 500, "guest_fault", &["its result is 10485", "--guest-max-result-bytes"]),
        attack("many-labels", 500, "guest_fault", &["--guest-max-result-bytes"]),
        attack("alias-labels", 500, "guest_fault", &["--guest-max-transfer-bytes"]),
        // No capability exists for these: the guest reports what it got.
        attack("read-file /etc/passwd", 422, "unprocessable_media", &["file: Err("]),
        attack("env", 422, "unprocessable_media", &["env: 0 vars []", "args: 0 []"]),
        attack(format!("socket 127.0.0.1:{closed_port}"), 422, "unprocessable_media", &["socket: Err("]),
    ]
}

/// The server's resident memory once what the last round freed has had time to go back: its
/// allocator keeps freed pages for reuse for a second (motion-model's `memory.rs`), so the
/// least of six readings over 1.5 s, with the bystander still at work.
fn settled_rss_kib(server: &Server) -> u64 {
    let reading = || {
        std::thread::sleep(Duration::from_millis(250));
        server.rss_kib()
    };
    (0..6).map(|_| reading()).min().unwrap()
}

fn post_attack(server: &Server, command: &str) -> reqwest::blocking::Response {
    server
        .client()
        .post(server.url("/v1/guests/hostile/classify"))
        .header("content-type", "text/plain")
        .body(command.to_string())
        .send()
        .unwrap()
}

/// Classifies a GIF through the default guest until told to stop, counting answers that
/// are not a 200 classification.
struct Bystander {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Bystander {
    fn start(server: &Server) -> Bystander {
        let (client, url) = (server.client(), server.url("/v1/classify"));
        let gif = clips::gif(16, 160, 90);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match client.post(&url).header("content-type", "image/gif").body(gif.clone()).send() {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
                    Err(e) => failures.push(e.to_string()),
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
        Bystander { stop, done, thread }
    }

    /// Stops and returns (requests made, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().unwrap();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn hostile_guests_fail_alone_and_leave_no_trace() {
    let hostile = test_guest("hostile");
    let server = ServerBuilder::new()
        .tls()
        .arg(&format!("--guest=hostile={}", hostile.display()))
        .arg("--guest-deadline=1500ms")
        .start();
    // A port nothing listens on: a connection attempt would be refused, not hang.
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A listener the guest is told to reach: it must never see a connection.
    let watched = TcpListener::bind("127.0.0.1:0").unwrap();
    watched.set_nonblocking(true).unwrap();
    let watched_port = watched.local_addr().unwrap().port();

    let bystander = Bystander::start(&server);
    let mut rss = Vec::new();
    for round in 0..3 {
        for a in attacks(closed_port) {
            let r = post_attack(&server, &a.command);
            let body = assert_error(r, a.status, a.code, &a.words);
            assert!(!body.to_string().contains("root:"), "round {round}, {}: {body}", a.command);
        }
        let r = post_attack(&server, &format!("socket 127.0.0.1:{watched_port}"));
        assert_error(r, 422, "unprocessable_media", &["socket: Err("]);
        assert!(watched.accept().is_err(), "the guest reached a socket");
        // Allowed: clocks and random numbers; and a flood of stdout is cut, not fatal.
        for ok in ["clock-random", "stdout-flood", "ok"] {
            let (status, body) = json(post_attack(&server, ok));
            assert_eq!(status, 200, "{ok}: {body}");
        }
        assert_eq!(json(server.get("/health")).0, 200, "round {round}");
        rss.push(settled_rss_kib(&server));
    }
    let (done, failures) = bystander.finish();
    assert!(failures.is_empty(), "the bystander saw {} failures of {done}: {failures:?}", failures.len());
    assert!(done >= 10, "the bystander made only {done} requests");

    // Round 1 warms every path; later rounds may not hold more than 10% above it.
    let (first, last) = (rss[0], *rss.last().unwrap());
    eprintln!("resident memory after each round (KiB): {rss:?}");
    assert!(last <= first + first / 10, "memory grew from {first} KiB to {last} KiB across rounds: {rss:?}");
    let log = server.log();
    assert!(log.contains("dropped_bytes"), "a flooded stdout is logged with what was dropped");
}

#[test]
fn guests_that_fail_validation_never_go_live() {
    let server = ServerBuilder::new().admin_token().start();
    let cases = [
        ("hostile-trap-info", vec!["info() failed", "trap"]),
        ("hostile-many-labels", vec!["10000 labels", "16 outputs"]),
    ];
    for (name, words) in cases {
        let bytes = std::fs::read(test_guest(name)).unwrap();
        let r = server
            .client()
            .put(server.url(&format!("/admin/guests/{name}")))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .unwrap();
        let body = assert_error(r, 422, "guest_rejected", &[]);
        let reasons = body["error"]["reasons"].to_string();
        for word in words {
            assert!(reasons.contains(word), "{name}: reasons {reasons} lack '{word}'");
        }
    }
    let (_, guests) = json(server.get("/v1/guests"));
    assert_eq!(guests["guests"].as_array().unwrap().len(), 1, "{guests}");
    assert_eq!(json(server.get("/health")).0, 200);
}

#[test]
fn requests_beyond_the_in_flight_cap_get_503_with_retry_after() {
    let hostile = test_guest("hostile");
    let server = ServerBuilder::new()
        .arg(&format!("--guest=hostile={}", hostile.display()))
        .arg("--max-in-flight=2")
        .start();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (server.client(), server.url("/v1/guests/hostile/classify"));
            std::thread::spawn(move || {
                client
                    .post(url)
                    .header("content-type", "text/plain")
                    .body("sleep 3000")
                    .send()
                    .unwrap()
                    .status()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let r = server
        .client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(clips::png(&clips::frame(32, 32, 0)))
        .send()
        .unwrap();
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), Some("1".into()));
    assert_error(r, 503, "overloaded", &["2 requests are in flight", "--max-in-flight"]);
    for s in slow {
        assert_eq!(s.join().unwrap(), 200);
    }
    // Slots come back: the next request is served.
    let (status, body) = json(post_attack(&server, "ok"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_full_model_queue_answers_503_overloaded() {
    let hostile = test_guest("hostile");
    let server = ServerBuilder::new()
        .arg(&format!("--guest=hostile={}", hostile.display()))
        .arg("--max-queue=1")
        .start();
    // The hostile guest's honest path skips decoding, so 32 at once reach the queue together.
    let mut overloaded = 0;
    for _attempt in 0..5 {
        let answers: Vec<_> = (0..32)
            .map(|_| {
                let (client, url) = (server.client(), server.url("/v1/guests/hostile/classify"));
                std::thread::spawn(move || {
                    let r = client.post(url).header("content-type", "text/plain").body("ok").send().unwrap();
                    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    let (status, body) = json(r);
                    (status, body, retry_after)
                })
            })
            .collect();
        for answer in answers {
            let (status, body, retry_after) = answer.join().unwrap();
            match status {
                200 => {}
                503 => {
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    let message = body["error"]["message"].as_str().unwrap();
                    assert!(message.contains("queue is full") && message.contains("--max-queue"), "{body}");
                    assert_eq!(retry_after.as_deref(), Some("1"));
                    overloaded += 1;
                }
                other => panic!("{other}: {body}"),
            }
        }
        if overloaded > 0 {
            break;
        }
    }
    assert!(overloaded > 0, "32 simultaneous requests never filled a queue of 1");
    assert_eq!(json(server.get("/health")).0, 200);
}

#[test]
fn a_guest_never_sees_what_an_earlier_request_left_in_its_memory() {
    // A pool slot keeps the pages its last guest dirtied resident for the next one (reset in
    // place): each round stashes a pattern across 4 MiB and then, in new instances, scans the
    // whole linear memory for it.
    let hostile = test_guest("hostile");
    let server = ServerBuilder::new().arg(&format!("--guest=hostile={}", hostile.display())).start();
    let r = post_attack(&server, "stash-and-look secret-0");
    let body = assert_error(r, 422, "unprocessable_media", &["stashed and found: "]);
    let found: usize =
        body["error"]["message"].as_str().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(found > 1000, "the scan found its own request's stash only {found} times: {body}");
    for round in 0..5 {
        let secret = format!("secret-{round}");
        let (status, body) = json(post_attack(&server, &format!("stash {secret}")));
        assert_eq!(status, 200, "{body}");
        for _ in 0..3 {
            let r = post_attack(&server, &format!("leftovers {secret}"));
            assert_error(r, 422, "unprocessable_media", &["leftovers: 0"]);
        }
    }
}
