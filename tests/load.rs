//! Load: 64 concurrent clients for 60 s (MOTION_HOST_LOAD_SECONDS overrides) posting a mix of
//! valid and invalid requests, twice. Every request gets a well-formed JSON answer, no client
//! fault gets a 5xx, and resident memory after the second round is within 10% of the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use motion_host_tests::{Server, ServerBuilder, clips};
use reqwest::blocking::multipart::{Form, Part};

const CLIENTS: usize = 64;

/// One kind of request and the status it must get.
#[derive(Clone)]
struct Kind {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    multipart: bool,
    status: u16,
}

fn kinds() -> Vec<Kind> {
    let frame = clips::frame(160, 90, 1);
    let png = clips::png(&frame);
    let kind = |name, path, content_type, body: Vec<u8>, status| Kind {
        name,
        path,
        content_type,
        body,
        multipart: false,
        status,
    };
    vec![
        kind("gif", "/v1/classify", Some("image/gif"), clips::gif(16, 160, 90), 200),
        kind("y4m", "/v1/classify?top_k=16", Some("video/x-yuv4mpeg"), clips::y4m(16, 160, 90), 200),
        Kind { multipart: true, ..kind("multipart", "/v1/classify", None, png.clone(), 200) },
        kind("truncated png", "/v1/classify", Some("image/png"), png[..png.len() / 2].to_vec(), 422),
        kind("bad top_k", "/v1/classify?top_k=99", Some("image/png"), png.clone(), 400),
        kind("wrong type", "/v1/classify", Some("text/csv"), b"a,b".to_vec(), 415),
        kind("no type", "/v1/classify", None, png.clone(), 415),
        kind("no guest", "/v1/guests/none/classify", Some("image/png"), png.clone(), 404),
        kind("too large", "/v1/classify", Some("image/png"), vec![0; 2_000_001], 413),
        kind("bad multipart", "/v1/classify", Some("multipart/form-data; boundary=Q"), png, 400),
    ]
}

/// Runs one round; returns the number of requests per kind.
fn round(server: &Server, seconds: u64) -> Vec<(String, usize)> {
    let kinds = Arc::new(kinds());
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, base, kinds) = (server.client(), server.url(""), Arc::clone(&kinds));
            std::thread::spawn(move || {
                let mut counts = vec![0usize; kinds.len()];
                let mut i = c;
                while Instant::now() < until {
                    let k = &kinds[i % kinds.len()];
                    i += 1;
                    let mut request = client.post(format!("{base}{}", k.path));
                    if k.multipart {
                        let part =
                            Part::bytes(k.body.clone()).file_name("0.png").mime_str("image/png").unwrap();
                        request = request.multipart(Form::new().part("frame", part));
                    } else {
                        request = request.body(k.body.clone());
                    }
                    if let Some(t) = k.content_type {
                        request = request.header("content-type", t);
                    }
                    let response = request.send().unwrap_or_else(|e| panic!("{}: no response: {e}", k.name));
                    let status = response.status().as_u16();
                    let text = response.text().unwrap();
                    let body: serde_json::Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", k.name));
                    assert_eq!(status, k.status, "{}: {body}", k.name);
                    if status == 200 {
                        assert!(body["label"].is_string() && body["top_k"].is_array(), "{}: {body}", k.name);
                    } else {
                        assert!(body["error"]["message"].is_string(), "{}: {body}", k.name);
                    }
                    counts[(i - 1) % kinds.len()] += 1;
                }
                counts
            })
        })
        .collect();
    let mut totals = vec![0usize; kinds.len()];
    for client in clients {
        for (t, n) in totals.iter_mut().zip(client.join().expect("a client failed")) {
            *t += n;
        }
    }
    kinds.iter().map(|k| k.name.to_string()).zip(totals).collect()
}

#[test]
fn sixty_four_clients_mixed_requests_two_rounds() {
    let seconds: u64 =
        std::env::var("MOTION_HOST_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let server = ServerBuilder::new().tls().arg("--max-body-bytes=2000000").start();
    let first = round(&server, seconds);
    let rss_first = server.rss_kib();
    let second = round(&server, seconds);
    let rss_second = server.rss_kib();
    eprintln!("round 1: {first:?}, resident {rss_first} KiB");
    eprintln!("round 2: {second:?}, resident {rss_second} KiB");
    for (name, n) in first.iter().chain(&second) {
        assert!(*n > 0, "no '{name}' request completed");
    }
    assert!(
        rss_second <= rss_first + rss_first / 10,
        "resident memory grew from {rss_first} KiB to {rss_second} KiB"
    );
}
