//! Certificate rotation: the certificate and key mounted the way a Kubernetes secret volume
//! mounts them (`tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`) are replaced by the
//! volume's atomic symlink flip while the server runs. New handshakes get the new pair, with no
//! restart; a broken pair is logged and the last good one stays.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use motion_host_tests::{Cert, Server, ServerBuilder, client_trusting};

/// How long a rotation may take to reach new handshakes (the watcher settles for 250 ms).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes `cert` as a new timestamped directory and flips `..data` to it the way kubelet does:
/// a temporary symlink renamed over the old one.
fn flip(tls: &Path, stamp: &str, cert: &[u8], key: &[u8]) {
    let dir = tls.join(stamp);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let tmp = tls.join("..data_tmp");
    symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, tls.join("..data")).unwrap();
}

/// Whether a fresh connection trusting only `der` completes a handshake and gets `/health`.
fn handshake_trusting(server: &Server, der: &[u8]) -> bool {
    // A new client per attempt: a pooled connection would keep the pair it was opened with.
    client_trusting(Some(der)).get(server.url("/health")).send().is_ok_and(|r| r.status() == 200)
}

#[test]
fn a_secret_volume_flip_rotates_the_certificate_and_a_broken_pair_keeps_the_last_good_one() {
    let builder = ServerBuilder::new();
    let tls = builder.dir().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let first = Cert::localhost(scratch.path(), "first");
    let second = Cert::localhost(scratch.path(), "second");
    let read = |p: &Path| std::fs::read(p).unwrap();

    flip(&tls, "..2026_11_22_10_00_00.1", &read(&first.cert), &read(&first.key));
    symlink("..data/tls.crt", tls.join("tls.crt")).unwrap();
    symlink("..data/tls.key", tls.join("tls.key")).unwrap();

    let server = builder.trust(first.der.clone()).start();
    assert_eq!(server.scheme(), "https");
    assert!(handshake_trusting(&server, &first.der));
    assert!(!handshake_trusting(&server, &second.der), "only the first certificate is served yet");

    // A connection opened before the rotation keeps working after it.
    let before = client_trusting(Some(&first.der));
    assert_eq!(before.get(server.url("/health")).send().unwrap().status(), 200);

    let flipped = Instant::now();
    flip(&tls, "..2026_11_22_10_05_00.2", &read(&second.cert), &read(&second.key));
    std::fs::remove_dir_all(tls.join("..2026_11_22_10_00_00.1")).unwrap();
    server.wait_for("the second certificate was not served", ROTATION_TIMEOUT, || {
        handshake_trusting(&server, &second.der)
    });
    eprintln!("new handshakes got the new certificate {} ms after the flip", flipped.elapsed().as_millis());
    assert!(!handshake_trusting(&server, &first.der), "new handshakes no longer get the first certificate");
    assert_eq!(
        before.get(server.url("/health")).send().unwrap().status(),
        200,
        "the open connection survives"
    );
    assert!(server.log().contains("TLS certificate reloaded"), "{}", server.log());

    // A pair whose key belongs to another certificate: refused, logged, the second one stays.
    flip(&tls, "..2026_11_22_10_10_00.3", &read(&first.cert), &read(&second.key));
    server.wait_for("the broken pair was not reported", ROTATION_TIMEOUT, || {
        server.log().contains("new TLS certificate or key refused")
    });
    let line =
        server.log().lines().find(|l| l.contains("new TLS certificate or key refused")).unwrap().to_string();
    assert!(line.contains("does not match"), "the warning names the problem: {line}");
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(handshake_trusting(&server, &second.der), "the last good certificate is still served");
    assert!(!handshake_trusting(&server, &first.der));
}

#[test]
fn a_certificate_rewritten_in_place_is_picked_up() {
    let builder = ServerBuilder::new();
    let dir = builder.dir().to_path_buf();
    let first = Cert::localhost(&dir, "first");
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let server = builder
        .trust(first.der.clone())
        .arg(&format!("--tls-cert={}", cert.display()))
        .arg(&format!("--tls-key={}", key.display()))
        .start();
    assert!(handshake_trusting(&server, &first.der));

    // cert-manager's csi driver and plain `cp` rewrite the files in place, one after the other.
    let scratch = tempfile::tempdir().unwrap();
    let second = Cert::localhost(scratch.path(), "second");
    std::fs::copy(&second.key, &key).unwrap();
    std::fs::copy(&second.cert, &cert).unwrap();
    server.wait_for("the rewritten certificate was not served", ROTATION_TIMEOUT, || {
        handshake_trusting(&server, &second.der)
    });
}
