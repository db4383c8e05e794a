//! Guests replaced while the server runs: the admin API, validation before anything goes live,
//! history and rollback, several guests by name, and swaps under load with no failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use motion_host_tests::{ADMIN_TOKEN, Server, ServerBuilder, assert_error, clips, json, test_guest};
use reqwest::blocking::RequestBuilder;

fn admin(server: &Server, method: reqwest::Method, path: &str) -> RequestBuilder {
    server.client().request(method, server.url(path)).bearer_auth(ADMIN_TOKEN)
}

fn put_guest(server: &Server, name: &str, bytes: Vec<u8>) -> reqwest::blocking::Response {
    admin(server, reqwest::Method::PUT, &format!("/admin/guests/{name}")).body(bytes).send().unwrap()
}

fn classify(server: &Server, path: &str) -> (u16, serde_json::Value) {
    let body = clips::y4m(12, 64, 36);
    json(
        server
            .client()
            .post(server.url(path))
            .header("content-type", "video/x-yuv4mpeg")
            .body(body)
            .send()
            .unwrap(),
    )
}

#[test]
fn admin_routes_are_absent_without_a_token_file() {
    let server = ServerBuilder::new().start();
    let r = server.client().get(server.url("/admin/guests")).bearer_auth(ADMIN_TOKEN).send().unwrap();
    assert_error(r, 404, "not_found", &[]);
}

#[test]
fn admin_needs_the_right_bearer_token() {
    let server = ServerBuilder::new().admin_token().start();
    let r = server.client().get(server.url("/admin/guests")).send().unwrap();
    assert_eq!(r.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    assert_error(r, 401, "unauthorized", &["Bearer"]);
    let r = server
        .client()
        .get(server.url("/admin/guests"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .unwrap();
    assert_error(r, 403, "forbidden", &["wrong"]);
    let (status, body) = json(admin(&server, reqwest::Method::GET, "/admin/guests").send().unwrap());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["default_guest"], "motion");
    assert_eq!(body["guests"][0]["name"], "motion");
    assert!(!server.log().contains(ADMIN_TOKEN), "the token must never be logged");
}

#[test]
fn admin_is_refused_over_plain_http_on_a_non_loopback_address() {
    let server = ServerBuilder::new().admin_token().bind_args(&["--bind=[::]:0"]).start();
    let r = admin(&server, reqwest::Method::GET, "/admin/guests").send().unwrap();
    assert_error(r, 403, "forbidden", &["plain HTTP", "--allow-insecure-admin"]);
    assert!(server.log().contains("admin API refused"), "{}", server.log());
    drop(server);

    let server = ServerBuilder::new()
        .admin_token()
        .bind_args(&["--bind=[::]:0"])
        .arg("--allow-insecure-admin")
        .start();
    assert_eq!(admin(&server, reqwest::Method::GET, "/admin/guests").send().unwrap().status(), 200);
    drop(server);

    // TLS on the same address is fine.
    let server = ServerBuilder::new().tls().admin_token().bind_args(&["--bind=[::]:0"]).start();
    assert_eq!(admin(&server, reqwest::Method::GET, "/admin/guests").send().unwrap().status(), 200);
}

#[test]
fn install_replace_rollback_and_remove_with_history() {
    let server = ServerBuilder::new().admin_token().start();
    let original = std::fs::read(test_guest("motion")).unwrap();
    let reversed = std::fs::read(test_guest("motion-reversed")).unwrap();

    // A new name: 201, served by name, listed publicly; the default is unchanged.
    let (status, entry) = json(put_guest(&server, "backwards", reversed.clone()));
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["version"], "0.1.0-reversed");
    assert_eq!(entry["default"], false);
    let (status, body) = classify(&server, "/v1/guests/backwards/classify");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["guest"]["name"], "backwards");
    assert_eq!(body["guest"]["version"], "0.1.0-reversed");
    let (_, listing) = json(server.get("/v1/guests"));
    let names: Vec<&str> =
        listing["guests"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["backwards", "motion"], "{listing}");
    assert_eq!(listing["guests"][1]["labels"].as_array().unwrap().len(), 16);
    assert!(listing["guests"][1]["limits"]["deadline_ms"].as_u64().is_some(), "{listing}");
    let limits = &listing["guests"][1]["limits"];
    assert_eq!(limits["memory_bytes"], 268435456, "{listing}");
    assert_eq!(limits["max_transfer_bytes"], 33554432, "{listing}");
    assert_eq!(limits["max_nn_calls"], 100, "{listing}");
    assert_eq!(classify(&server, "/v1/classify").1["guest"]["version"], "0.1.0");

    // Replacing the default: 200, new requests see the new version, the old is in history.
    let (status, entry) = json(put_guest(&server, "motion", reversed.clone()));
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["history"][0]["version"], "0.1.0");
    assert_eq!(classify(&server, "/v1/classify").1["guest"]["version"], "0.1.0-reversed");
    let (_, health) = json(server.get("/health"));
    assert_eq!(health["guests"]["motion"]["version"], "0.1.0-reversed");

    // Rollback returns to the previous version, once.
    let (status, entry) =
        json(admin(&server, reqwest::Method::POST, "/admin/guests/motion/rollback").send().unwrap());
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["version"], "0.1.0");
    assert_eq!(entry["digest"], format!("sha256:{}", sha256_hex(&original)));
    assert_eq!(classify(&server, "/v1/classify").1["guest"]["version"], "0.1.0");
    let r = admin(&server, reqwest::Method::POST, "/admin/guests/motion/rollback").send().unwrap();
    assert_error(r, 409, "conflict", &["no earlier version"]);

    // The default cannot be removed; another guest can, once.
    let r = admin(&server, reqwest::Method::DELETE, "/admin/guests/motion").send().unwrap();
    assert_error(r, 409, "conflict", &["default"]);
    let r = admin(&server, reqwest::Method::DELETE, "/admin/guests/backwards").send().unwrap();
    assert_eq!(r.status(), 204);
    let r = admin(&server, reqwest::Method::DELETE, "/admin/guests/backwards").send().unwrap();
    assert_error(r, 404, "not_found", &["backwards"]);
    let (status, _) = classify(&server, "/v1/guests/backwards/classify");
    assert_eq!(status, 404);

    // Every action left an audit line.
    let log = server.log();
    for action in [
        "admin install backwards: installed",
        "admin install motion: replaced",
        "admin rollback motion",
        "admin remove backwards: removed",
    ] {
        assert!(log.contains(action), "no audit line '{action}':\n{log}");
    }
}

#[test]
fn invalid_guests_are_rejected_and_the_live_version_keeps_serving() {
    let server = ServerBuilder::new().admin_token().start();
    let live = json(server.get("/health")).1["guests"]["motion"]["digest"].clone();
    // An empty component compiles and links, but exports nothing of our world.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    // A core module is not a component.
    let core_module = b"\0asm\x01\x00\x00\x00".to_vec();
    let guest = |name: &str| std::fs::read(test_guest(name)).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"definitely not wasm".to_vec(), "does not compile"),
        (core_module, "does not compile"),
        (empty_component, "motion:guest/classifier"),
        (guest("motion-duplicate-label"), "label 'static' appears twice"),
        (guest("motion-failing-classify"), "fails every classification"),
        // Small uploads pass; the host copying a large one in makes its allocator call out.
        (guest("hostile-import-in-realloc"), "image/png sample"),
        (guest("hostile-import-in-realloc"), "cannot leave component instance"),
    ];
    for (bytes, reason) in cases {
        let r = put_guest(&server, "motion", bytes);
        let body = assert_error(r, 422, "guest_rejected", &["motion"]);
        let reasons = body["error"]["reasons"].as_array().unwrap_or_else(|| panic!("no reasons: {body}"));
        assert!(reasons.iter().any(|r| r.as_str().unwrap().contains(reason)), "{reason}: {body}");
        assert_eq!(json(server.get("/health")).1["guests"]["motion"]["digest"], live);
        assert_eq!(classify(&server, "/v1/classify").0, 200);
    }
    let r = put_guest(&server, "bad%20name!", std::fs::read(test_guest("motion")).unwrap());
    assert_error(r, 400, "bad_request", &["guest name"]);
    // A name that would read as a flag on a command line.
    let r = put_guest(&server, "-rf", std::fs::read(test_guest("motion")).unwrap());
    assert_error(r, 400, "bad_request", &["guest name '-rf'", "not starting with '.' or '-'"]);
    // One byte over --max-body-bytes (64 MiB): the client reads the 413, not a reset.
    let r = put_guest(&server, "motion", vec![0u8; 64 * 1024 * 1024 + 1]);
    assert_error(r, 413, "payload_too_large", &["--max-body-bytes"]);
    assert_eq!(json(server.get("/health")).1["guests"]["motion"]["digest"], live);
}

/// 16 clients classify continuously while the default guest is swapped 20 times between two
/// builds: no request fails, and every answer is exactly what the version it names computes.
#[test]
fn swaps_under_load_drop_nothing_and_never_mix_versions() {
    // Start on the first of the two builds, so every answer comes from one of them.
    let first = format!("motion={}", test_guest("motion").display());
    let server = Arc::new(ServerBuilder::new().admin_token().guest(&first).start());
    let versions =
        [std::fs::read(test_guest("motion")).unwrap(), std::fs::read(test_guest("motion-reversed")).unwrap()];

    // What each version answers for the clip, from a guest installed beside the default.
    let clip = clips::y4m(12, 64, 36);
    let mut expected = std::collections::HashMap::new();
    for (i, bytes) in versions.iter().enumerate() {
        let name = format!("reference{i}");
        assert!(put_guest(&server, &name, bytes.clone()).status().is_success());
        let (status, body) = classify(&server, &format!("/v1/guests/{name}/classify?top_k=16"));
        assert_eq!(status, 200, "{body}");
        expected.insert(
            body["guest"]["digest"].as_str().unwrap().to_string(),
            (body["guest"]["version"].clone(), body["top_k"].clone()),
        );
    }
    assert_eq!(expected.len(), 2, "the two builds must differ");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (server, stop, answered, clip, expected) = (
                Arc::clone(&server),
                Arc::clone(&stop),
                Arc::clone(&answered),
                clip.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                let client = server.client();
                let mut seen = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(server.url("/v1/classify?top_k=16"))
                        .header("content-type", "video/x-yuv4mpeg")
                        .body(clip.clone())
                        .send()
                        .expect("no request may fail during swaps");
                    let (status, body) = json(r);
                    assert_eq!(status, 200, "{body}");
                    let digest = body["guest"]["digest"].as_str().unwrap().to_string();
                    let (version, top_k) =
                        expected.get(&digest).unwrap_or_else(|| panic!("unknown digest: {body}"));
                    assert_eq!(&body["guest"]["version"], version, "{body}");
                    assert_same_scores(&body["top_k"], top_k, &body);
                    seen.insert(digest);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();

    let started = Instant::now();
    let mut swap_ms = Vec::new();
    for swap in 0..20 {
        let t = Instant::now();
        let r = put_guest(&server, "motion", versions[(swap + 1) % 2].clone());
        assert_eq!(r.status(), 200, "swap {swap}");
        swap_ms.push(t.elapsed().as_millis());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::HashSet::new();
    for client in clients {
        seen.extend(client.join().expect("a client failed"));
    }
    let answered = answered.load(Ordering::Relaxed);
    eprintln!(
        "{answered} answers in {:.1} s across 20 swaps; swap (validate + compile + install) ms: {swap_ms:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(seen.len(), 2, "clients saw both versions");
    assert!(answered >= 40, "only {answered} answers");
}

/// The same labels in the same order with the same scores, up to float rounding: a request
/// batched with others runs the model at another batch size, which rounds differently.
fn assert_same_scores(got: &serde_json::Value, want: &serde_json::Value, body: &serde_json::Value) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{body}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["label"], w["label"], "an answer mixes versions: {body}");
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gs - ws).abs() < 1e-4, "an answer mixes versions ({gs} vs {ws}): {body}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring_digest(bytes);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn ring_digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

/// Polls `/health` until guest `name` reports `version`.
fn wait_for_version(server: &Server, name: &str, version: &str) {
    server.wait_for(
        &format!("guest '{name}' did not reach version {version}"),
        Duration::from_secs(60),
        || json(server.get("/health")).1["guests"][name]["version"] == version,
    );
}

#[test]
fn guest_dir_swaps_on_atomic_rename_and_keeps_the_running_version_on_a_broken_file() {
    let builder = ServerBuilder::new();
    let dir = builder.dir().join("guests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(test_guest("motion"), dir.join("motion.wasm")).unwrap();
    let server = builder.arg(&format!("--guest-dir={}", dir.display())).start();
    let (_, health) = json(server.get("/health"));
    assert_eq!(health["default_guest"], "motion");
    assert_eq!(health["guests"]["motion"]["version"], "0.1.0");

    // Write beside, then rename over: the way to replace a file atomically.
    let replace = |bytes: Vec<u8>| {
        let tmp = dir.join(".motion.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.join("motion.wasm")).unwrap();
    };
    replace(std::fs::read(test_guest("motion-reversed")).unwrap());
    wait_for_version(&server, "motion", "0.1.0-reversed");
    assert_eq!(classify(&server, "/v1/classify").1["guest"]["version"], "0.1.0-reversed");

    // A broken file is logged and the running version stays.
    replace(b"not a component".to_vec());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("guest file rejected") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(json(server.get("/health")).1["guests"]["motion"]["version"], "0.1.0-reversed");
    assert_eq!(classify(&server, "/v1/classify").0, 200);

    // A new file is a new guest.
    std::fs::copy(test_guest("motion"), dir.join("second.wasm")).unwrap();
    wait_for_version(&server, "second", "0.1.0");
}

#[test]
fn guest_dir_follows_the_kubernetes_symlink_flip() {
    use std::os::unix::fs::symlink;
    let builder = ServerBuilder::new();
    let dir = builder.dir().join("guests");
    // A mounted volume: ..data -> ..v1/, and motion.wasm -> ..data/motion.wasm.
    for (version, guest) in [("..v1", "motion"), ("..v2", "motion-reversed")] {
        std::fs::create_dir_all(dir.join(version)).unwrap();
        std::fs::copy(test_guest(guest), dir.join(version).join("motion.wasm")).unwrap();
    }
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/motion.wasm", dir.join("motion.wasm")).unwrap();
    let server = builder.arg(&format!("--guest-dir={}", dir.display())).start();
    assert_eq!(json(server.get("/health")).1["guests"]["motion"]["version"], "0.1.0");

    // The flip: a new ..data symlink renamed over the old one.
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for_version(&server, "motion", "0.1.0-reversed");
}

#[test]
fn guest_check_validates_offline() {
    let check = |file: &std::path::Path| {
        std::process::Command::new(motion_host_tests::bin())
            .current_dir(motion_host_tests::repo_root())
            .args(["guest", "check"])
            .arg(file)
            .output()
            .unwrap()
    };
    let out = check(&test_guest("motion-reversed"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("accepted") && report.contains("0.1.0-reversed") && report.contains("pan_left"),
        "{report}"
    );
    // A sample of every type it accepts, each at least 8 MiB, went through the guest.
    for media_type in ["multipart/form-data", "image/png", "image/jpeg", "image/gif", "video/x-yuv4mpeg"] {
        let line = report
            .lines()
            .find(|l| l.contains(&format!("the {media_type} sample")))
            .unwrap_or_else(|| panic!("no {media_type} sample: {report}"));
        let bytes: usize =
            line.split(", ").nth(1).and_then(|b| b.split(' ').next()).unwrap().parse().unwrap();
        assert!(bytes >= 8 << 20, "{line}");
    }
    assert!(!report.contains("unchecked"), "{report}");

    // A guest whose allocator calls an import when a large upload is copied in passes a check
    // with small inputs only; the samples catch it before it goes live.
    let out = check(&test_guest("hostile-import-in-realloc"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("image/png sample") && report.contains("cannot leave component instance"),
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").unwrap();
    let out = check(&empty);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("rejected") && report.contains("motion:guest/classifier"), "{report}");
}

#[test]
fn compiled_guests_are_cached_and_only_trusted_artifacts_are_loaded() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = format!("--compile-cache={}", cache.path().display());
    let reversed = std::fs::read(test_guest("motion-reversed")).unwrap();
    let server = ServerBuilder::new().admin_token().arg(&cache_arg).start();

    let (status, entry) = json(put_guest(&server, "other", reversed.clone()));
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["code"], "compiled");
    let (status, entry) = json(put_guest(&server, "other", reversed.clone()));
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["code"], "cached", "the same bytes again skip compilation: {entry}");
    let files: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.iter().filter(|f| f.ends_with(".cwasm")).count(), 2, "{files:?}");
    assert_eq!(files.iter().filter(|f| f.ends_with(".cwasm.sha256")).count(), 2, "{files:?}");

    // A restart finds the default guest in the cache.
    drop(server);
    let server = ServerBuilder::new().admin_token().arg(&cache_arg).start();
    let log = server.log();
    let line = log.lines().find(|l| l.contains("guest loaded and validated")).expect("a guest line");
    assert!(line.contains("\"code\":\"cached\""), "{line}");

    // An artifact that does not match its record is never loaded: it is rebuilt.
    for file in files.iter().filter(|f| f.ends_with(".cwasm")) {
        std::fs::write(cache.path().join(file), b"tampered").unwrap();
    }
    let (status, entry) = json(put_guest(&server, "third", reversed));
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["code"], "compiled", "{entry}");
    assert!(server.log().contains("does not match its recorded digest"), "{}", server.log());
    assert_eq!(classify(&server, "/v1/guests/third/classify").0, 200);
}
