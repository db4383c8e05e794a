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
    wait_until(&format!("descriptors to fall back to {fds_before}"), || server.open_descriptors() <= fds_before);
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
