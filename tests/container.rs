//! The container image against the platform contract, on a real engine (podman with runc):
//! the Dockerfile's CPU image, built by `scripts/test` and named in `MOTION_HOST_TEST_IMAGE`,
//! run the way a platform runs it — its port passed as `--bind`, its certificate mounted at the
//! well-known directory, a read-only root, memory and CPU limits, no capabilities — and
//! stopped the way a platform stops it.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

use motion_host_tests::{ADMIN_TOKEN, Cert, free_port, json, repo_root, test_guest, test_python};
use reqwest::blocking::Client;

/// The port the platform assigns inside the container.
const PORT: u16 = 30751;
/// A network with IPv6, so published ports are reachable over IPv6 too.
const NETWORK: &str = "motion-host-test-v6";

fn image() -> String {
    std::env::var("MOTION_HOST_TEST_IMAGE").unwrap_or_else(|_| {
        panic!("MOTION_HOST_TEST_IMAGE is not set: run the suite with scripts/test, which builds the image")
    })
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("podman runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn network() {
    static MADE: Once = Once::new();
    MADE.call_once(|| {
        if !podman(&["network", "exists", NETWORK]).status.success() {
            let out = podman(&["network", "create", "--ipv6", NETWORK]);
            assert!(out.status.success(), "{}", text(&out));
        }
    });
}

/// A running container, removed when dropped (its log printed if the test failed).
struct Container {
    name: String,
    host_port: u16,
}

/// `podman run` as a platform would: read-only root, limits, no capabilities, no privilege
/// escalation, and ulimits under this machine's hard limits.
fn run(name: &str, extra: &[String], args: &[&str]) -> Container {
    network();
    let name = format!("motion-host-test-{name}-{}", std::process::id());
    let host_port = free_port();
    let _ = podman(&["rm", "-f", &name]);
    let mut cmd: Vec<String> = ["run", "-d", "--name", &name, "--pull=never", "--network", NETWORK]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for limit in std::env::var("MOTION_HOST_ULIMITS").unwrap_or_default().split_whitespace() {
        cmd.extend(["--ulimit".into(), limit.into()]);
    }
    cmd.extend(
        [
            "--read-only",
            "--memory=1g",
            "--cpus=1",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "-p",
            &format!("{host_port}:{PORT}"),
        ]
        .map(String::from),
    );
    cmd.extend(extra.iter().cloned());
    cmd.push(image());
    cmd.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = podman(&refs);
    assert!(out.status.success(), "podman run failed: {}", text(&out));
    Container { name, host_port }
}

impl Container {
    fn logs(&self) -> String {
        text(&podman(&["logs", &self.name]))
    }

    fn inspect(&self, format: &str) -> String {
        String::from_utf8_lossy(&podman(&["inspect", &self.name, "--format", format]).stdout)
            .trim()
            .to_string()
    }

    /// Polls `url` with `client` until it answers 200; returns how long that took.
    fn wait_healthy(&self, client: &Client, url: &str) -> Duration {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if client.get(url).send().is_ok_and(|r| r.status() == 200) {
                return started.elapsed();
            }
            assert_eq!(self.inspect("{{.State.Running}}"), "true", "the container stopped:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{url} never answered 200:\n{}", self.logs());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- podman logs {} ----\n{}", self.name, self.logs());
        }
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

/// A directory the container's user (uid 10001) can read, mounted read-only.
/// Runs `script` with `sh` in a throw-away container of the image (as its user, without its
/// entrypoint) and returns what it printed; it must succeed.
fn shell_in_image(script: &str) -> String {
    let out = podman(&["run", "--rm", "--pull=never", "--entrypoint", "sh", &image(), "-c", script]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    listing
}

fn readable_dir(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// A client that trusts `cert` and sends `localhost` to `addr`, so the certificate's name
/// matches whatever address is tried.
fn client_for(cert: &Cert, addr: SocketAddr) -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&cert.der).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap()
}

/// This machine's global IPv6 addresses, outside the container networks.
fn host_ipv6() -> Vec<IpAddr> {
    let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (hex, scope, device) = (f.first()?, f.get(3)?, f.get(5)?);
            if *scope != "00"
                || device.starts_with("podman")
                || device.starts_with("veth")
                || device.starts_with("cni")
            {
                return None;
            }
            let bytes: Vec<u8> =
                (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
            Some(IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()))
        })
        .collect()
}

fn tls_dir() -> (tempfile::TempDir, Cert) {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::localhost(dir.path(), "tls");
    readable_dir(dir.path());
    (dir, cert)
}

#[test]
fn the_image_is_lean_non_root_and_exec_form() {
    let out = podman(&["image", "inspect", &image()]);
    assert!(out.status.success(), "{}", text(&out));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = &inspected[0];
    let size = image["Size"].as_u64().unwrap();
    eprintln!("image size: {:.1} MB", size as f64 / 1e6);
    assert!(size <= 700_000_000, "the CPU image is {size} bytes; the goal is at most 700 MB");
    let config = &image["Config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["motion-host", "serve"]));
    assert_eq!(config["User"], "10001:10001");
    let labels = &config["Labels"];
    for label in ["version", "revision", "source", "licenses"] {
        let value = labels[format!("org.opencontainers.image.{label}")].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "OCI label {label} missing: {labels}");
    }
    let healthcheck = &image["Healthcheck"];
    assert_eq!(
        healthcheck["Test"],
        serde_json::json!(["CMD", "motion-host", "healthcheck"]),
        "{healthcheck}"
    );

    // Every library the binary needs is in the image; no libtorch headers came along.
    let listing = shell_in_image(
        "ldd /usr/local/bin/motion-host; echo headers: $(find / -xdev -name '*.h' -path '*torch*' | wc -l); ls /usr/share/doc/motion-host",
    );
    assert!(!listing.contains("not found"), "{listing}");
    assert!(listing.contains("libtorch_cpu.so => /opt/motion-host/lib/libtorch_cpu.so"), "{listing}");
    assert!(listing.contains("headers: 0"), "{listing}");
    for licence in ["LICENSE", "LICENSE.libtorch", "LICENSE.wasi-nn-wit", "LICENSE.jemalloc"] {
        assert!(listing.lines().any(|l| l == licence), "licence {licence} missing: {listing}");
    }

    // The image can start a guest project: the toolkit that Python and JavaScript guests
    // compose in is where MOTION_HOST_TOOLKIT says.
    let listing = shell_in_image(
        "motion-host guest new demo --lang python --dir /tmp/demo && cmp /tmp/demo/toolkit.wasm \"$MOTION_HOST_TOOLKIT\" && ls /tmp/demo /tmp/demo/wit/deps",
    );
    for file in ["app.py", "build.sh", "toolkit.wasm", "motion-guest", "toolkit", "wasi-nn"] {
        assert!(listing.lines().any(|l| l == file), "{file} missing: {listing}");
    }
}

/// The CA bundle the image was built with reached no layer, no history entry and no setting of
/// the image: it was a build secret, mounted only while the steps that download ran.
#[test]
fn the_build_ca_is_in_no_layer_and_not_in_the_history() {
    let bundle = std::env::var("MOTION_HOST_BUILD_CA").unwrap_or_else(|_| {
        panic!("MOTION_HOST_BUILD_CA is not set: scripts/test names the CA bundle it built the image with")
    });
    let out = Command::new(test_python())
        .arg(repo_root().join("tests/python/image_secrets.py"))
        .args([&image(), &bundle])
        .output()
        .expect("run tests/python/image_secrets.py");
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", text(&out));
}

#[test]
fn tls_on_the_platform_port_over_ipv4_and_ipv6_and_healthy_by_the_engine() {
    let (dir, cert) = tls_dir();
    let mount = format!("{}:/etc/motion-host/tls:ro", dir.path().display());
    let started = Instant::now();
    let c = run("tls", &["-v".into(), mount], &[&format!("--bind=[::]:{PORT}")]);
    let v4 = SocketAddr::from(([127, 0, 0, 1], c.host_port));
    let ready = c.wait_healthy(&client_for(&cert, v4), &format!("https://localhost:{}/health", c.host_port));
    eprintln!(
        "container start to healthy: {:.2} s (run to first 200: {:.2} s)",
        started.elapsed().as_secs_f64(),
        ready.as_secs_f64()
    );
    let logs = c.logs();
    assert!(logs.contains("TLS on") && logs.contains("well-known path /etc/motion-host/tls"), "{logs}");
    assert!(logs.contains(&format!("https://[::]:{PORT}")), "{logs}");

    // IPv6: to the published port on this machine's global addresses, and to the container.
    let container_v6: IpAddr = c
        .inspect(&format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").GlobalIPv6Address}}}}"))
        .parse()
        .unwrap();
    let mut v6 = vec![SocketAddr::new(container_v6, PORT)];
    v6.extend(host_ipv6().into_iter().map(|ip| SocketAddr::new(ip, c.host_port)));
    for addr in v6 {
        let r = client_for(&cert, addr).get(format!("https://localhost:{}/health", addr.port())).send();
        let status = r.unwrap_or_else(|e| panic!("{addr}: {e}")).status();
        assert_eq!(status, 200, "{addr}");
    }

    // The engine's health check runs `motion-host healthcheck` inside, which finds the address
    // and scheme in the server's state file.
    let out = podman(&["healthcheck", "run", &c.name]);
    assert!(out.status.success(), "healthcheck: {}", text(&out));
    assert_eq!(c.inspect("{{.State.Health.Status}}"), "healthy");

    let out = podman(&["exec", &c.name, "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10001");
    let out = podman(&["exec", &c.name, "sh", "-c", "touch /opt/motion-host/x"]);
    assert!(!out.status.success() && text(&out).contains("Read-only"), "{}", text(&out));
    let limit = c.inspect("{{.HostConfig.Memory}}");
    assert_eq!(limit, (1u64 << 30).to_string());
}

#[test]
fn without_a_certificate_it_serves_plain_http_and_says_so() {
    let c = run("plain", &[], &[&format!("--bind=[::]:{PORT}")]);
    let client = Client::builder().no_proxy().build().unwrap();
    c.wait_healthy(&client, &format!("http://127.0.0.1:{}/health", c.host_port));
    let logs = c.logs();
    let warning = logs.lines().find(|l| l.contains("serving plain HTTP")).unwrap_or_else(|| panic!("{logs}"));
    assert!(warning.contains("\"level\":\"WARN\"") && warning.contains("/etc/motion-host/tls"), "{warning}");
}

#[test]
fn podman_stop_drains_in_flight_requests_and_exits_zero() {
    let guests = tempfile::tempdir().unwrap();
    std::fs::copy(test_guest("hostile"), guests.path().join("hostile.wasm")).unwrap();
    readable_dir(guests.path());
    let mount = format!("{}:/guests:ro", guests.path().display());
    let c = run(
        "stop",
        &["-v".into(), mount],
        &[
            &format!("--bind=[::]:{PORT}"),
            "--guest=motion=/opt/motion-host/guests/motion.wasm",
            "--guest=hostile=/guests/hostile.wasm",
        ],
    );
    let url = format!("http://127.0.0.1:{}", c.host_port);
    let client = Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    c.wait_healthy(&client, &format!("{url}/health"));

    let slow = std::thread::spawn({
        let client = client.clone();
        let url = format!("{url}/v1/guests/hostile/classify");
        move || {
            client
                .post(url)
                .header("content-type", "text/plain")
                .body("sleep 3000")
                .send()
                .map(|r| r.status().as_u16())
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let out = podman(&["stop", "-t", "40", &c.name]);
    let took = stopping.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("podman stop took {:.2} s with a 3 s request in flight", took.as_secs_f64());
    assert_eq!(slow.join().unwrap().expect("the in-flight request got an answer"), 200);
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(took < Duration::from_secs(30), "stop took {took:?}: the server did not drain in time");
    let logs = c.logs();
    assert!(logs.contains("draining") && logs.contains("\"stopped\""), "{logs}");
}

#[test]
fn a_guest_swap_through_the_admin_api_with_a_mounted_token() {
    let (tls, cert) = tls_dir();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    readable_dir(secrets.path());
    let c = run(
        "admin",
        &[
            "-v".into(),
            format!("{}:/etc/motion-host/tls:ro", tls.path().display()),
            "-v".into(),
            format!("{}:/run/secrets/motion-host:ro", secrets.path().display()),
            "-e".into(),
            "ADMIN_TOKEN_FILE=/run/secrets/motion-host/admin-token".into(),
        ],
        &[&format!("--bind=[::]:{PORT}")],
    );
    let client = client_for(&cert, SocketAddr::from(([127, 0, 0, 1], c.host_port)));
    let base = format!("https://localhost:{}", c.host_port);
    c.wait_healthy(&client, &format!("{base}/health"));

    let guest = std::fs::read(test_guest("motion-reversed")).unwrap();
    let r = client.put(format!("{base}/admin/guests/motion")).body(guest.clone()).send().unwrap();
    assert_eq!(r.status(), 401, "no token, no swap");
    let r = client
        .put(format!("{base}/admin/guests/motion"))
        .bearer_auth(ADMIN_TOKEN)
        .body(guest)
        .send()
        .unwrap();
    let (status, body) = json(r);
    assert_eq!(status, 200, "{body}");
    let (_, guests) = json(client.get(format!("{base}/v1/guests")).send().unwrap());
    assert_eq!(guests["guests"][0]["version"], "0.1.0-reversed", "{guests}");
    let r = client
        .post(format!("{base}/v1/classify"))
        .header("content-type", "image/gif")
        .body(std::fs::read(motion_host_tests::repo_root().join("examples/clip.gif")).unwrap())
        .send()
        .unwrap();
    let (status, answer) = json(r);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["guest"]["version"], "0.1.0-reversed");
}
