//! Graceful shutdown: on SIGTERM readiness turns 503 at once, new connections are still taken
//! for the grace period and then refused, in-flight requests finish, and the process exits 0.
//! A second signal exits at once.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use motion_host_tests::{Server, ServerBuilder, json, test_guest};

fn slow_server(extra: &[&str]) -> Server {
    let hostile = test_guest("hostile");
    let mut builder = ServerBuilder::new().tls().arg(&format!("--guest=hostile={}", hostile.display()));
    for arg in extra {
        builder = builder.arg(arg);
    }
    builder.start()
}

/// Posts `sleep MS` to the hostile guest on a thread; returns the status it got.
fn slow_request(server: &Server, ms: u64) -> std::thread::JoinHandle<Result<u16, String>> {
    let (client, url) = (server.client(), server.url("/v1/guests/hostile/classify"));
    std::thread::spawn(move || {
        let r = client.post(url).header("content-type", "text/plain").body(format!("sleep {ms}")).send();
        r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
    })
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut server = slow_server(&["--shutdown-grace=1s", "--shutdown-timeout=20s"]);
    let addr = server.addresses()[0];
    let in_flight: Vec<_> = (0..6).map(|_| slow_request(&server, 4000)).collect();
    std::thread::sleep(Duration::from_millis(700));

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    // Readiness is off at once; liveness stays on while draining.
    let ready = Instant::now() + Duration::from_secs(2);
    let mut status = 0;
    while Instant::now() < ready {
        status = json(server.get("/health/ready")).0;
        if status == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status, 503, "readiness did not turn off");
    let (_, health) = json(server.get("/health"));
    assert_eq!(health["status"], "draining", "{health}");
    assert_eq!(json(server.get("/health/live")).0, 200);
    // A request that still arrives during the grace period is served.
    let r = server
        .client()
        .post(server.url("/v1/guests/hostile/classify"))
        .header("content-type", "text/plain")
        .body("ok")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // After the grace period, no new connections.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(signalled.elapsed()));
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(refused, "new connections are still accepted after the grace period");

    for request in in_flight {
        assert_eq!(request.join().unwrap(), Ok(200), "an in-flight request was lost");
    }
    let code = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", server.log());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(10), "draining took {took:?}");
    assert!(!server.state_file().exists(), "the state file is removed on exit");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = slow_server(&["--shutdown-grace=0s", "--shutdown-timeout=25s"]);
    let stuck = slow_request(&server, 8000);
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    server.signal(libc::SIGINT);
    let code = server.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(second.elapsed() < Duration::from_secs(2), "took {:?} after the second signal", second.elapsed());
    assert!(server.log().contains("second signal"), "{}", server.log());
    // The abandoned request ends with an error, not a hang.
    assert!(stuck.join().unwrap().is_err());
}
