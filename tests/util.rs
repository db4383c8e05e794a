//! The end-to-end test harness: it owns temporary directories, certificates, ports, starting
//! and stopping the real `motion-host` binary, and prints the server's log when a test fails.
//!
//! The binary and the default guest must be built first (`scripts/test` does it); the harness
//! says so and fails rather than skipping when they are missing.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};

/// How long a server may take to become healthy (model load + guest compile on a slow CI box).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// The `motion-host` binary under test: `MOTION_HOST_BIN`, else the release build.
pub fn bin() -> PathBuf {
    let path = std::env::var_os("MOTION_HOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/motion-host"));
    assert!(path.is_file(), "{} is missing: build it first (scripts/test does)", path.display());
    path
}

/// The default guest component, as built by `scripts/test`.
pub fn guest_wasm() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip2/release/motion_guest.wasm");
    assert!(path.is_file(), "{} is missing: build the guest first (scripts/test does)", path.display());
    path
}

/// A guest build from `target/test-guests/`, as built by `scripts/test`: `motion` (the default
/// guest), `motion-reversed` (version 0.1.0-reversed, frames in reverse order), and the broken
/// `motion-duplicate-label` and `motion-failing-classify`.
pub fn test_guest(name: &str) -> PathBuf {
    let path = repo_root().join("target/test-guests").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: build the test guests first (scripts/test does)", path.display());
    path
}

/// The 16 labels of the model contract, in index order: written out here, not taken from the
/// guest, so that the tests check the guest against the contract.
pub const LABELS: [&str; 16] = [
    "static",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "zoom_in",
    "zoom_out",
    "roll_clockwise",
    "roll_counterclockwise",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "pedestal_down",
    "dolly_in",
    "dolly_out",
    "shake",
];

/// The admin token the harness configures with [`ServerBuilder::admin_token`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The version the default model's manifest declares, which the server reports with every
/// classification.
pub fn default_model_version() -> String {
    let path = repo_root().join("models/motion-resnet18/model.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    manifest["version"].as_str().expect("model.toml has a version").to_owned()
}

/// The Python with the tests' packages (`tests/requirements.txt`): scripts/test installs them
/// into a cached virtual environment and names its interpreter in `MOTION_HOST_TEST_PYTHON`.
pub fn test_python() -> PathBuf {
    match std::env::var_os("MOTION_HOST_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "MOTION_HOST_TEST_PYTHON is not set: run the suite with scripts/test, which installs \
             tests/requirements.txt and sets it, or point it at a python3 that has those packages"
        ),
    }
}

/// Triton's `perf_analyzer`: scripts/test installs it in the cache and names its wrapper in
/// `MOTION_HOST_PERF_ANALYZER`.
pub fn perf_analyzer() -> PathBuf {
    match std::env::var_os("MOTION_HOST_PERF_ANALYZER") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "MOTION_HOST_PERF_ANALYZER is not set: run the suite with scripts/test, which installs \
             perf_analyzer (perf_analyzer_tool in scripts/env.sh) and sets it"
        ),
    }
}

/// A port that was free a moment ago (for tests that must choose the port, like `PORT`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A self-signed certificate and its key, written as PEM files.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Cert {
    /// A certificate for `names` (DNS names or IP addresses) in `dir`, as `<stem>.crt`/`.key`.
    pub fn new(dir: &Path, stem: &str, names: &[&str]) -> Cert {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        Cert { cert, key, der: certified.cert.der().to_vec() }
    }

    /// A certificate for localhost, 127.0.0.1 and ::1.
    pub fn localhost(dir: &Path, stem: &str) -> Cert {
        Cert::new(dir, stem, &["localhost", "127.0.0.1", "::1"])
    }
}

/// Variables a test server must not inherit from the environment it runs in.
const SCRUBBED_ENV: &[&str] = &[
    "PORT",
    "TLS_CERTFILE",
    "TLS_KEYFILE",
    "TLS_DIR",
    "MOTION_HOST_BIND",
    "MOTION_HOST_GUEST",
    "MOTION_HOST_MODEL_DIR",
    "MOTION_HOST_DEVICE",
    "MOTION_HOST_STATE_FILE",
    "MOTION_HOST_MAX_BODY_BYTES",
    "MOTION_HOST_LOG_FORMAT",
    "MOTION_HOST_GUEST_PROFILER",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
];

/// How to start a server.
pub struct ServerBuilder {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    bind: Option<Vec<String>>,
    guest: Option<String>,
    tls: Option<Cert>,
    ca: Option<Vec<u8>>,
}

impl ServerBuilder {
    /// A server on 127.0.0.1 (ephemeral port), plain HTTP, the default model and guest, its
    /// state file and an empty TLS directory in a fresh temporary directory.
    pub fn new() -> ServerBuilder {
        ServerBuilder {
            dir: tempfile::tempdir().expect("a temporary directory"),
            args: Vec::new(),
            env: Vec::new(),
            bind: None,
            guest: None,
            tls: None,
            ca: None,
        }
    }

    /// The server's temporary directory, for files a test puts beside it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Serves HTTPS with a fresh localhost certificate passed by flag.
    pub fn tls(mut self) -> Self {
        let cert = Cert::localhost(self.dir.path(), "server");
        self.ca = Some(cert.der.clone());
        self.tls = Some(cert);
        self
    }

    /// Trusts this certificate in [`Server::client`] (for TLS set up by other means).
    pub fn trust(mut self, der: Vec<u8>) -> Self {
        self.ca = Some(der);
        self
    }

    /// Configures the admin API with [`ADMIN_TOKEN`] in a token file.
    pub fn admin_token(self) -> Self {
        let path = self.dir.path().join("admin-token");
        std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).unwrap();
        let arg = format!("--admin-token-file={}", path.display());
        self.arg(&arg)
    }

    /// Replaces the default `--bind 127.0.0.1:0` with these `--bind` arguments (none: no flag).
    pub fn bind_args(mut self, args: &[&str]) -> Self {
        self.bind = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Replaces the default `--guest motion=<built guest>`.
    pub fn guest(mut self, spec: &str) -> Self {
        self.guest = Some(spec.to_string());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn command(&self) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new(bin());
        cmd.current_dir(repo_root()).arg("serve");
        match &self.bind {
            Some(args) => cmd.args(args),
            None => cmd.args(["--bind", "127.0.0.1:0"]),
        };
        cmd.arg(format!("--state-file={}", dir.join("serve.json").display()));
        cmd.arg(format!("--tls-dir={}", dir.join("tls").display()));
        if !self.args.iter().any(|a| a.starts_with("--compile-cache")) {
            cmd.arg(format!("--compile-cache={}", dir.join("compiled").display()));
        }
        if !self.args.iter().any(|a| a.starts_with("--model-dir")) {
            cmd.arg(format!("--model-dir={}", repo_root().join("models").display()));
        }
        let guest = self.guest.clone().unwrap_or_else(|| format!("motion={}", guest_wasm().display()));
        cmd.arg(format!("--guest={guest}"));
        if let Some(cert) = &self.tls {
            cmd.arg(format!("--tls-cert={}", cert.cert.display()));
            cmd.arg(format!("--tls-key={}", cert.key.display()));
        }
        cmd.args(&self.args).arg("--log-format=json").arg("--inference-threads=1");
        for key in SCRUBBED_ENV {
            cmd.env_remove(key);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the server and waits until its listeners are open (the state file is written).
    pub fn spawn(self) -> Server {
        let log = self.dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("motion-host starts");
        let mut server =
            Server { child: Some(child), log, dir: self.dir, ca: self.ca, state: serde_json::Value::Null };
        server.wait_listening();
        server
    }

    /// Starts the server and waits until `/health` answers 200.
    pub fn start(self) -> Server {
        let mut server = self.spawn();
        server.wait_healthy();
        server
    }

    /// Runs the server expecting it to refuse to start; returns its exit status and output.
    pub fn run_to_exit(self) -> Output {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("server did not exit; output:\n{}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `motion-host serve`; killed when dropped, its log printed if the test failed.
pub struct Server {
    child: Option<Child>,
    log: PathBuf,
    dir: tempfile::TempDir,
    ca: Option<Vec<u8>>,
    /// The state file's contents.
    pub state: serde_json::Value,
}

impl Server {
    fn wait_listening(&mut self) {
        let path = self.dir.path().join("serve.json");
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(state) = serde_json::from_str(&text)
            {
                self.state = state;
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("server exited with {status} before listening:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not write its state file:\n{}", self.log());
    }

    /// Polls `/health` until it answers 200; a server that exits first fails at once, with its
    /// log.
    pub fn wait_healthy(&mut self) {
        let client = self.client();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(self.url("/health")).send()
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("server exited with {status} before it was healthy:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy:\n{}", self.log());
    }

    /// Polls `done` every 50 ms until it holds; past `timeout`, fails saying `what` did not
    /// happen, with the server's log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} within {timeout:?}; log:\n{}", self.log());
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("serve.json")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every bound address, from the state file.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.state["addresses"]
            .as_array()
            .expect("state file lists addresses")
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect()
    }

    pub fn scheme(&self) -> String {
        self.state["scheme"].as_str().unwrap().to_string()
    }

    /// A URL on the first bound address (a wildcard becomes 127.0.0.1).
    pub fn url(&self, path: &str) -> String {
        let addr = self.addresses()[0];
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("{}://{host}:{}{path}", self.scheme(), addr.port())
    }

    /// A client that trusts the server's certificate (if any) and uses no proxy.
    pub fn client(&self) -> Client {
        client_trusting(self.ca.as_deref())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Response {
        self.client().get(self.url(path)).send().expect("GET succeeds")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The server's certificate (DER), when it serves TLS set up by the builder.
    pub fn ca_der(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// The value of one sample of `/metrics`, written as the exposition writes it
    /// (`name{label="value"}`); 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").text().expect("the metrics are text");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Descriptors the server has open now.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// The server's resident memory, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The server's address space, in KiB (`VmSize`).
    pub fn vm_size_kib(&self) -> u64 {
        self.proc_status_kib("VmSize:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits for the server to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- motion-host log ({}) ----\n{}", self.log.display(), self.log());
        }
    }
}

/// A blocking client with no proxy that trusts `ca` (DER) when given.
pub fn client_trusting(ca: Option<&[u8]>) -> Client {
    let mut builder =
        Client::builder().no_proxy().timeout(Duration::from_secs(120)).tls_built_in_root_certs(false);
    if let Some(der) = ca {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(der).unwrap());
    }
    builder.build().unwrap()
}

/// Parses a response as JSON, showing the body when it is not.
pub fn json(response: Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let mut text = String::new();
    let mut response = response;
    response.read_to_string(&mut text).unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
    (status, value)
}

/// Asserts an error body: the status, `error.code`, and words in `error.message`.
pub fn assert_error(response: Response, status: u16, code: &str, words: &[&str]) -> serde_json::Value {
    let (got, body) = json(response);
    assert_eq!(got, status, "status; body: {body}");
    assert_eq!(body["error"]["code"], code, "code; body: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    for word in words {
        assert!(message.contains(word), "message '{message}' lacks '{word}'");
    }
    body
}

/// Clip fixtures, generated so every test states what it sends.
pub mod clips {
    use std::io::Cursor;

    use image::codecs::gif::GifEncoder;
    use image::{Delay, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    /// A frame of `width`×`height` with a pattern that moves with `t`.
    pub fn frame(width: u32, height: u32, t: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = ((x + 3 * t) / 8 + y / 8) % 2;
            Rgb([(v * 200 + 20) as u8, ((x + t) % 256) as u8, (y % 256) as u8])
        })
    }

    pub fn png(image: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    pub fn jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// A small, well-formed PNG whose header claims `width`×`height` RGB: what
    /// a hostile upload would send to make a decoder allocate.
    pub fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        // IHDR, then the start of an image (a few bytes of IDAT) and the end marker.
        for chunk in [chunk, b"IDAT\x78\x9c\x03\x00".to_vec(), b"IEND".to_vec()] {
            png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
        }
        png
    }

    /// `n` frames as PNGs.
    pub fn png_frames(n: u32, width: u32, height: u32) -> Vec<Vec<u8>> {
        (0..n).map(|t| png(&frame(width, height, t))).collect()
    }

    /// An animated GIF of `n` frames.
    pub fn gif(n: u32, width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut out);
            for t in 0..n {
                let rgb = frame(width, height, t);
                let rgba = RgbaImage::from_fn(width, height, |x, y| {
                    let p = rgb.get_pixel(x, y);
                    Rgba([p[0], p[1], p[2], 255])
                });
                encoder
                    .encode_frame(image::Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(40, 1)))
                    .unwrap();
            }
        }
        out
    }

    /// A Y4M (4:2:0) clip of `n` frames, as `ffmpeg -f yuv4mpegpipe` writes it.
    pub fn y4m(n: u32, width: usize, height: usize) -> Vec<u8> {
        let mut out =
            format!("YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n").into_bytes();
        for t in 0..n as usize {
            out.extend_from_slice(b"FRAME\n");
            out.extend((0..width * height).map(|i| ((i % width + 3 * t) % 256) as u8));
            out.extend(std::iter::repeat_n(128u8, 2 * width.div_ceil(2) * height.div_ceil(2)));
        }
        out
    }
}
