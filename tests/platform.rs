//! The platform contract, end to end: bind forms, PORT, dual-stack `[::]`, TLS precedence and
//! refusal, the start-up log line, health phases and the `healthcheck` probe.

use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

use motion_host_tests::{Cert, ServerBuilder, bin, free_port, guest_wasm, json};

#[test]
fn both_bind_spellings_serve() {
    for args in [&["--bind=127.0.0.1:0"][..], &["--bind", "127.0.0.1:0"][..]] {
        let server = ServerBuilder::new().bind_args(args).start();
        let (status, body) = json(server.get("/health"));
        assert_eq!(status, 200, "{args:?}: {body}");
        assert_eq!(server.addresses()[0].ip().to_string(), "127.0.0.1");
    }
}

#[test]
fn repeated_binds_all_listen() {
    let server = ServerBuilder::new().bind_args(&["--bind=127.0.0.1:0", "--bind", "[::1]:0"]).start();
    let addrs = server.addresses();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let client = server.client();
    for addr in addrs {
        let url = format!("http://{addr}/health");
        assert_eq!(client.get(&url).send().unwrap().status(), 200, "{url}");
    }
}

#[test]
fn port_env_binds_the_dual_stack_wildcard_for_ipv4_and_ipv6_clients() {
    let port = free_port();
    let server = ServerBuilder::new().bind_args(&[]).env("PORT", &port.to_string()).start();
    assert_eq!(server.addresses(), vec![format!("[::]:{port}").parse().unwrap()]);
    let client = server.client();
    for url in [format!("http://127.0.0.1:{port}/health"), format!("http://[::1]:{port}/health")] {
        assert_eq!(client.get(&url).send().unwrap().status(), 200, "{url}");
    }
    let log = server.log();
    assert!(log.contains("bind from env PORT"), "start-up line names PORT:\n{log}");
}

#[test]
fn explicit_wildcard_bind_accepts_ipv4_clients() {
    let server = ServerBuilder::new().bind_args(&["--bind=[::]:0"]).start();
    let port = server.addresses()[0].port();
    let client = server.client();
    for url in [format!("http://127.0.0.1:{port}/health/live"), format!("http://[::1]:{port}/health/live")] {
        assert_eq!(client.get(&url).send().unwrap().status(), 200, "{url}");
    }
}

#[test]
fn tls_from_the_well_known_directory_with_no_flags() {
    let builder = ServerBuilder::new();
    let tls_dir = builder.dir().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let cert = Cert::localhost(&tls_dir, "tls");
    let server = builder.trust(cert.der.clone()).start();
    assert_eq!(server.scheme(), "https");
    let (status, body) = json(server.get("/health"));
    assert_eq!(status, 200, "{body}");
    let log = server.log();
    let line = log.lines().find(|l| l.contains("listening on")).expect("one start-up line");
    assert!(line.contains("https://127.0.0.1:"), "{line}");
    assert!(line.contains("well-known path"), "{line}");
    assert!(line.contains("bind from flag --bind"), "{line}");
}

#[test]
fn tls_follows_a_kubernetes_style_symlinked_mount() {
    // Secret volumes mount ..data -> ..2026_11_21/ and tls.crt -> ..data/tls.crt.
    let builder = ServerBuilder::new();
    let tls_dir = builder.dir().join("tls");
    let versioned = tls_dir.join("..2026_11_21");
    std::fs::create_dir_all(&versioned).unwrap();
    let cert = Cert::localhost(&versioned, "tls");
    symlink("..2026_11_21", tls_dir.join("..data")).unwrap();
    symlink("..data/tls.crt", tls_dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", tls_dir.join("tls.key")).unwrap();
    let server = builder.trust(cert.der.clone()).start();
    assert_eq!(json(server.get("/health")).0, 200);
}

#[test]
fn tls_env_variables_and_flags_take_precedence() {
    // Env variables beat the well-known directory (which holds a broken pair here).
    let builder = ServerBuilder::new();
    let tls_dir = builder.dir().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::write(tls_dir.join("tls.crt"), "broken").unwrap();
    std::fs::write(tls_dir.join("tls.key"), "broken").unwrap();
    let cert = Cert::localhost(builder.dir(), "env");
    let server = builder
        .env("TLS_CERTFILE", cert.cert.to_str().unwrap())
        .env("TLS_KEYFILE", cert.key.to_str().unwrap())
        .trust(cert.der.clone())
        .start();
    assert_eq!(json(server.get("/health")).0, 200);
    assert!(server.log().contains("from env TLS_CERTFILE"), "{}", server.log());
    drop(server);

    // Flags beat env variables (which point at missing files here).
    let server = ServerBuilder::new()
        .tls()
        .env("TLS_CERTFILE", "/nonexistent/cert.pem")
        .env("TLS_KEYFILE", "/nonexistent/key.pem")
        .start();
    assert_eq!(server.scheme(), "https");
    assert!(server.log().contains("from flag --tls-cert"), "{}", server.log());
}

#[test]
fn tls_speaks_1_2_and_1_3_and_offers_h2() {
    let server = ServerBuilder::new().tls().start();
    let h2 = server.client().get(server.url("/health")).send().unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2, "ALPN should pick h2");

    let state_ca = std::fs::read(server.dir().join("server.crt")).unwrap();
    let ca = reqwest::Certificate::from_pem(&state_ca).unwrap();
    for (min, max) in [
        (reqwest::tls::Version::TLS_1_2, reqwest::tls::Version::TLS_1_2),
        (reqwest::tls::Version::TLS_1_3, reqwest::tls::Version::TLS_1_3),
    ] {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .min_tls_version(min)
            .max_tls_version(max)
            .http1_only()
            .build()
            .unwrap();
        let r = client.get(server.url("/health")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
    }
}

#[test]
fn plain_http_with_a_warning_when_no_certificate_is_found() {
    let server = ServerBuilder::new().start();
    assert_eq!(server.scheme(), "http");
    let log = server.log();
    assert!(log.contains("TLS off"), "{log}");
    assert!(log.contains("\"level\":\"WARN\"") && log.contains("serving plain HTTP"), "{log}");
}

/// Certificates that are present but unusable stop start-up, naming the file.
#[test]
fn a_broken_certificate_refuses_to_start() {
    // (what to put in the TLS directory, words the error must contain)
    type Setup = fn(&std::path::Path);
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "cert without key",
            |d| {
                Cert::localhost(d, "tls");
                std::fs::remove_file(d.join("tls.key")).unwrap();
            },
            "tls.key",
        ),
        (
            "key without cert",
            |d| {
                Cert::localhost(d, "tls");
                std::fs::remove_file(d.join("tls.crt")).unwrap();
            },
            "tls.crt",
        ),
        (
            "cert not PEM",
            |d| {
                Cert::localhost(d, "tls");
                std::fs::write(d.join("tls.crt"), "hello").unwrap();
            },
            "tls.crt",
        ),
        (
            "key not PEM",
            |d| {
                Cert::localhost(d, "tls");
                std::fs::write(d.join("tls.key"), "hello").unwrap();
            },
            "tls.key",
        ),
        (
            "key of another cert",
            |d| {
                Cert::localhost(d, "tls");
                let other = Cert::localhost(d, "other");
                std::fs::rename(other.key, d.join("tls.key")).unwrap();
            },
            "does not match",
        ),
    ];
    for (what, setup, words) in cases {
        let builder = ServerBuilder::new();
        let tls_dir = builder.dir().join("tls");
        std::fs::create_dir_all(&tls_dir).unwrap();
        setup(&tls_dir);
        let out = builder.run_to_exit();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{what}: started anyway:\n{text}");
        assert!(text.contains(words), "{what}: error lacks '{words}':\n{text}");
        assert!(text.contains(tls_dir.to_str().unwrap()), "{what}: error names no file:\n{text}");
        assert!(!text.contains("listening on"), "{what}: it listened:\n{text}");
    }
}

#[test]
fn bad_settings_stop_start_up_with_the_reason() {
    let cases: Vec<(Vec<&str>, Vec<(&str, &str)>, &str)> = vec![
        (vec!["--bind=nonsense"], vec![], "nonsense"),
        (vec![], vec![("PORT", "http")], "PORT='http'"),
        (vec!["--device=tpu"], vec![], "--device 'tpu'"),
        (vec!["--guest=motion=/nonexistent/guest.wasm"], vec![], "/nonexistent/guest.wasm"),
        (vec!["--model-dir=/nonexistent/models"], vec![], "/nonexistent/models"),
        (vec!["--max-in-flight=0"], vec![], "--max-in-flight and --max-queue must be at least 1"),
        (
            vec!["--max-upload-memory=1024"],
            vec![],
            "--max-upload-memory (1024) must be at least --max-body-bytes",
        ),
        (vec!["--max-connections=0"], vec![], "--max-connections must be at least 1"),
        (vec!["--idle-timeout=0s"], vec![], "--idle-timeout must be more than 0"),
    ];
    for (args, env, words) in cases {
        let mut builder = ServerBuilder::new();
        if args.iter().any(|a| a.starts_with("--bind")) || env.iter().any(|(k, _)| *k == "PORT") {
            builder = builder.bind_args(&[]);
        }
        for arg in &args {
            builder = builder.arg(arg);
        }
        for (k, v) in &env {
            builder = builder.env(k, v);
        }
        let out = builder.run_to_exit();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{args:?}: started anyway:\n{text}");
        assert!(text.contains(words), "{args:?}: error lacks '{words}':\n{text}");
        // Flags are checked before any socket opens (files are read while loading).
        if !words.starts_with('/') {
            assert!(!text.contains("listening on"), "{args:?}: it listened first:\n{text}");
        }
    }
}

/// A guest path that is a FIFO holds the server in `starting` until the test writes the guest:
/// the listener must already answer, 503 with the exact starting body.
#[test]
fn health_is_503_starting_until_the_model_and_guest_are_loaded() {
    let builder = ServerBuilder::new();
    let fifo = builder.dir().join("guest.wasm");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut server = builder.guest(&format!("motion={}", fifo.display())).spawn();

    let (status, body) = json(server.get("/health"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "starting");
    assert_eq!(body["version"], "0.1.0");
    // The model loads before the guest, so either is truthful here; it is always a bool.
    assert!(body["model_loaded"].is_boolean(), "{body}");
    assert_eq!(json(server.get("/health/ready")).0, 503);
    assert_eq!(json(server.get("/health/live")).0, 200);
    // healthcheck reports the 503 and exits 1.
    let out = healthcheck(&["--state-file", server.state_file().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("503"));
    // classify is refused while starting.
    let r = server
        .client()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(vec![1, 2, 3])
        .send()
        .unwrap();
    let body = motion_host_tests::assert_error(r, 503, "not_ready", &["starting"]);
    assert!(body["error"]["message"].is_string());

    // Releasing the guest makes the server healthy.
    std::fs::write(&fifo, std::fs::read(guest_wasm()).unwrap()).unwrap();
    server.wait_healthy();
    let (status, body) = json(server.get("/health"));
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["model_loaded"], true);
    assert_eq!(body["version"], "0.1.0");
    assert_eq!(body["default_guest"], "motion");
    assert!(body["guests"]["motion"]["digest"].as_str().unwrap().starts_with("sha256:"), "{body}");
    assert_eq!(json(server.get("/health/ready")).0, 200);
}

fn healthcheck(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("healthcheck")
        .args(args)
        // A forward proxy that would refuse an internal address: the probe must not use it.
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap()
}

#[test]
fn healthcheck_finds_the_server_through_its_state_file_despite_a_proxy() {
    // The certificate names only another host: the local probe accepts it anyway.
    let builder = ServerBuilder::new();
    let cert = Cert::new(builder.dir(), "elsewhere", &["service.internal.example"]);
    let server = builder
        .arg(&format!("--tls-cert={}", cert.cert.display()))
        .arg(&format!("--tls-key={}", cert.key.display()))
        .trust(cert.der.clone())
        .spawn();
    // The test client cannot verify the name either; poll with the probe itself.
    let state = server.state_file();
    let mut last = None;
    for _ in 0..2400 {
        let out = healthcheck(&["--state-file", state.to_str().unwrap()]);
        if out.status.success() {
            last = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = last.unwrap_or_else(|| panic!("healthcheck never passed:\n{}", server.log()));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with("healthy: https://127.0.0.1:"), "{line}");

    // The same through --url.
    let out = healthcheck(&["--url", &server.url("/health")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn healthcheck_says_why_it_failed() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--url".into(), format!("http://127.0.0.1:{port}/health")], "connection refused"),
        (vec!["--state-file".into(), dir.path().join("none.json").display().to_string()], "state file"),
    ];
    for (args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = healthcheck(&args);
        let line = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {line}");
        assert!(line.starts_with("unhealthy: ") && line.contains(words), "{args:?}: {line}");
        assert_eq!(line.trim().lines().count(), 1, "one line: {line}");
    }

    // A TLS server probed over TLS with a client hello it rejects is a TLS failure; plain
    // HTTP to a TLS port is not healthy either.
    let server = ServerBuilder::new().tls().start();
    let plain = server.url("/health").replace("https://", "http://");
    let out = healthcheck(&["--url", &plain]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "motion-host 0.1.0");
    let help = Command::new(bin()).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bind",
        "--tls-cert",
        "--tls-key",
        "--tls-dir",
        "--model-dir",
        "--guest",
        "--device",
        "--max-body-bytes",
        "--log-format",
        "--guest-memory-bytes",
        "--guest-max-instances",
        "--guest-max-tables",
        "--guest-max-table-elements",
        "--guest-deadline",
        "--guest-max-transfer-bytes",
        "--guest-max-result-bytes",
        "--guest-max-nn-calls",
        "--guest-max-nn-bytes",
        "--max-in-flight",
        "--max-queue",
        "--max-batch-size",
        "--max-batch-delay",
        "--request-timeout",
        "--header-timeout",
        "--shutdown-grace",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
    assert!(help.contains("[env: TLS_CERTFILE=]") || help.contains("env: TLS_CERTFILE"), "{help}");
    assert!(help.contains("[default: /etc/motion-host/tls]"), "{help}");
    for default in ["[default: 268435456]", "[default: 10s]", "[default: 64]", "[default: 25s]"] {
        assert!(help.contains(default), "serve --help lacks {default}");
    }
}
