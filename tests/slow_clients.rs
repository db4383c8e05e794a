//! Slow and idle clients cannot lock anyone out: a slow upload holds no work slot and is cut
//! off by `--min-upload-rate`; connections are capped per client address and overall (with
//! health probes still answered past the cap); a connection with no request in progress is
//! closed after `--idle-timeout`. A well-behaved client, from another address, sees no failure
//! throughout. (`bench/attack` runs the full-size attacks and prints their table.)

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use motion_host_tests::{Server, ServerBuilder, assert_error, json, repo_root};
use reqwest::blocking::Client;

/// The well-behaved client's address: another loopback address than the attackers' 127.0.0.1.
const BYSTANDER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn bystander(ca: Option<&[u8]>) -> Client {
    let mut builder = Client::builder()
        .no_proxy()
        .local_address(BYSTANDER)
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false);
    if let Some(der) = ca {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(der).unwrap());
    }
    builder.build().unwrap()
}

fn clip() -> Vec<u8> {
    std::fs::read(repo_root().join("examples/clip.gif")).unwrap()
}

/// The bystander's request: `examples/clip.gif` to `/v1/classify`.
fn classify(client: &Client, server: &Server) -> reqwest::Result<reqwest::blocking::Response> {
    client.post(server.url("/v1/classify")).header("content-type", "image/gif").body(clip()).send()
}

/// Raises this process's descriptor limit, for tests that hold thousands of connections.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Reads until the peer closes (or `limit` passes); the bytes read and whether it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// 128 uploads at 1 byte/s against `--max-in-flight=4`: before, they held every slot and the
/// bystander got 503s; now they hold none, and each is refused with 408 once a 5 s window
/// passes under `--min-upload-rate`.
#[test]
fn slow_uploads_hold_no_work_slot_and_are_cut_off() {
    raise_descriptor_limit();
    let server = ServerBuilder::new().arg("--max-in-flight=4").start();
    let addr = server.addresses()[0];
    let attackers: Vec<_> = (0..128)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let started = Instant::now();
                stream
                    .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/gif\r\nContent-Length: 100000\r\n\r\nG")
                    .unwrap();
                let mut answer = Vec::new();
                while started.elapsed() < Duration::from_secs(20) {
                    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(1));
                    answer.extend(got);
                    if closed || !answer.is_empty() {
                        let (rest, _) = read_until_closed(&mut stream, Duration::from_secs(2));
                        answer.extend(rest);
                        break;
                    }
                    if stream.write_all(b"I").is_err() {
                        break;
                    }
                }
                (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let client = bystander(None);
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        statuses.push(classify(&client, &server).map(|r| r.status().as_u16()).unwrap_or(0));
    }
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    assert_eq!(failed, 0, "the bystander failed {failed} of {} requests: {statuses:?}", statuses.len());

    let mut answered = 0;
    for attacker in attackers {
        let (answer, took) = attacker.join().unwrap();
        assert!(took < Duration::from_secs(12), "a 1 byte/s upload lasted {took:?}: {answer}");
        if answer.starts_with("HTTP/1.1 408") {
            assert!(answer.contains("\"code\":\"upload_too_slow\""), "{answer}");
            assert!(answer.contains("--min-upload-rate"), "{answer}");
            assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
            answered += 1;
        }
    }
    // A refusal can race the client's next byte into a reset; nearly all must read the 408.
    assert!(answered >= 120, "only {answered} of 128 slow uploads read their 408");
    let metrics = server.get("/metrics").text().unwrap();
    assert!(metrics.contains("motion_host_uploads_too_slow_total 128"), "{metrics}");
}

/// A request announces its model call as its body starts, so that a forward pass gathered
/// meanwhile waits for it, but only for the body's first 5 ms: an upload that stalls never
/// holds a pass. Under `--max-batch-delay=5s`, a classification sent beside a stalled upload
/// is answered at once, in a pass of its own, both just after the stall began and later.
#[test]
fn a_stalled_upload_holds_no_forward_pass() {
    let server = ServerBuilder::new().arg("--max-batch-delay=5s").start();
    let mut stalled = TcpStream::connect(server.addresses()[0]).unwrap();
    stalled
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/gif\r\nContent-Length: 100000\r\n\r\nG")
        .unwrap();
    let client = bystander(None);
    for pause in [Duration::ZERO, Duration::from_millis(300)] {
        std::thread::sleep(pause);
        let started = Instant::now();
        let (status, body) = json(classify(&client, &server).unwrap());
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(2),
            "a stalled upload held the pass: the answer took {took:?}: {body}"
        );
        assert_eq!(body["batch_size"], 1, "{body}");
    }
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_millis(100));
    assert!(!closed, "the stalled upload was cut off before its rate window ended");
}

/// A body is sized to its declared length before it arrives, but only within room as large as
/// the upload budget: 32 uploads that declare 60 MB each and stall reserve one such buffer, not
/// 32 (1.9 GB of address space), and a classification sent meanwhile, whose body finds no room
/// left and grows as it arrives, is answered.
#[test]
fn bodies_sized_ahead_reserve_no_more_than_the_upload_budget() {
    let budget = 64 * 1024 * 1024;
    let server = ServerBuilder::new()
        .arg(&format!("--max-body-bytes={budget}"))
        .arg(&format!("--max-upload-memory={budget}"))
        .start();
    let client = bystander(None);
    let (status, body) = json(classify(&client, &server).unwrap());
    assert_eq!(status, 200, "{body}");
    let before = server.vm_size_kib();
    let stalled: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addresses()[0]).unwrap();
            stream
                .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/gif\r\nContent-Length: 60000000\r\n\r\nG")
                .unwrap();
            stream
        })
        .collect();
    // The scrape's own connection counts too (and the bystander's, if it is still kept alive),
    // so 33 is reached with 31 of the 32 in at the least; the pause lets the last one in, and
    // every handler has its headers and sizes (or does not size) its body before the first byte.
    server.wait_for("the 32 stalled uploads to be accepted", Duration::from_secs(10), || {
        server.metric("motion_host_connections_open") >= 33.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = json(classify(&client, &server).unwrap());
    assert_eq!(status, 200, "{body}");
    let grown = server.vm_size_kib().saturating_sub(before) / 1024;
    assert!(grown < 512, "32 stalled uploads of 60 MB grew the address space by {grown} MiB");
    drop(stalled);
}

/// 2,000 idle TLS connections from one address: past `--max-connections-per-ip` each is closed
/// as it is accepted (its handshake fails), the ones taken are closed after `--idle-timeout`,
/// the descriptor count stays near the cap, and health checks and classifications from another
/// address are served throughout.
#[test]
fn idle_tls_connections_are_capped_per_address_and_reaped() {
    raise_descriptor_limit();
    let cap = 64;
    let server = ServerBuilder::new()
        .tls()
        .arg(&format!("--max-connections-per-ip={cap}"))
        .arg("--idle-timeout=3s")
        .start();
    let addr: SocketAddr = server.addresses()[0];
    let ca = server.ca_der().unwrap().to_vec();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.clone())).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let descriptors_before = server.open_descriptors();

    let mut held = Vec::new();
    let mut refused = 0;
    let mut peak_descriptors = 0;
    for i in 0..2000 {
        let Ok(mut tcp) = TcpStream::connect(addr) else {
            refused += 1;
            continue;
        };
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls =
            rustls::ClientConnection::new(Arc::clone(&config), "localhost".try_into().unwrap()).unwrap();
        let mut handshake = Ok(());
        while tls.is_handshaking() && handshake.is_ok() {
            handshake = tls.complete_io(&mut tcp).map(|_| ());
        }
        match handshake {
            Ok(()) => held.push((tcp, tls)),
            Err(_) => refused += 1,
        }
        if i % 100 == 0 {
            peak_descriptors = peak_descriptors.max(server.open_descriptors());
            let health = bystander(Some(&ca)).get(server.url("/health")).send().unwrap();
            assert_eq!(health.status(), 200, "/health during the flood");
        }
    }
    let last_handshake = Instant::now();
    assert_eq!(held.len(), cap, "connections taken from one address");
    assert_eq!(refused, 2000 - cap);
    assert!(
        peak_descriptors <= descriptors_before + cap + 16,
        "the server held {peak_descriptors} descriptors (from {descriptors_before}) for {cap} connections"
    );

    let client = bystander(Some(&ca));
    assert_eq!(json(classify(&client, &server).unwrap()).0, 200, "a classification from another address");

    // Every idle connection is closed by the server within the idle timeout (and a little).
    for (mut tcp, _tls) in held {
        let waited = last_handshake.elapsed();
        let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(6).saturating_sub(waited));
        assert!(closed, "an idle connection was still open {:?} after the flood", last_handshake.elapsed());
    }
    assert!(server.open_descriptors() <= descriptors_before + 4, "descriptors after the flood");
    let metrics = bystander(Some(&ca)).get(server.url("/metrics")).send().unwrap().text().unwrap();
    let refused_line =
        format!("motion_host_connections_refused_total{{reason=\"max_connections_per_ip\"}} {}", 2000 - cap);
    assert!(metrics.contains(&refused_line), "{refused_line} not in:\n{metrics}");
    let closed_idle: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("motion_host_connections_closed_idle_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no idle-closed count in:\n{metrics}"));
    assert!(closed_idle >= cap, "{closed_idle} connections closed idle, {cap} held");
}

/// Past `--max-connections`, new connections serve health probes only (503 for the rest, and
/// closed after the answer); past the health reserve they are closed at once. A keep-alive
/// connection is closed `--idle-timeout` after its last request.
#[test]
fn past_the_connection_cap_health_still_answers_and_keep_alive_connections_are_reaped() {
    let server = ServerBuilder::new()
        .arg("--max-connections=8")
        .arg("--max-connections-per-ip=0")
        .arg("--idle-timeout=4s")
        .start();
    let addr = server.addresses()[0];

    // HTTP/1.1 keep-alive: answered, then closed after the idle timeout, not before.
    let mut keep_alive = TcpStream::connect(addr).unwrap();
    keep_alive.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answered = Instant::now();
    let (answer, closed) = read_until_closed(&mut keep_alive, Duration::from_secs(8));
    let after = answered.elapsed();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        closed && after >= Duration::from_secs(3) && after < Duration::from_secs(7),
        "closed {closed} after {after:?}"
    );

    // Eight idle connections fill the cap.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let client = bystander(None);
    let health = client.get(server.url("/health")).send().unwrap();
    assert_eq!(health.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_eq!(json(health).0, 200, "/health past the cap");
    let r = classify(&client, &server).unwrap();
    assert_error(r, 503, "overloaded", &["8 connections are open", "--max-connections", "/health"]);

    // The health reserve (32) full too: the next connection is closed unanswered.
    let reserve: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(addr).unwrap();
    let _ = over.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(2));
    assert!(closed && answer.is_empty(), "past the reserve: {}", String::from_utf8_lossy(&answer));

    drop((held, reserve));
    std::thread::sleep(Duration::from_millis(300));
    let r = classify(&client, &server).unwrap();
    assert_eq!(json(r).0, 200, "served again once the connections closed");
}
