//! The command line: one clap struct per command. Each flag's doc comment is its `--help`
//! text and states its default; `env` names the variable that sets it when the flag is absent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use motion_runtime::Limits;

#[derive(Debug, Parser)]
#[command(
    name = "motion-host",
    version,
    about = "WebAssembly-plugin model host for a camera-motion classifier"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model and its guests over HTTP(S).
    Serve(Box<ServeArgs>),
    /// Probe a running server's /health; exit 0 when healthy, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Work with guest components offline.
    #[command(subcommand)]
    Guest(GuestCommand),
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Validate a guest exactly as a server would before it goes live (compile, link, info()
    /// against the model, a sample clip of each accepted media type) and print a report; exit 0 when it would be accepted.
    Check(GuestCheckArgs),
    /// Write a new guest project (source, WIT, build script, README with the build, check and
    /// ship commands) that builds outside this repository.
    New(GuestNewArgs),
}

#[derive(Debug, Args)]
pub struct GuestNewArgs {
    /// The guest's name: lower-case letters, digits and '-'. It names the project, its
    /// package, the component it builds and the name it installs under.
    pub name: String,

    /// The language of the guest: rust (on the motion-guest-sdk crate), python
    /// (componentize-py) or js (jco); a python or js guest is its policy (labels, frames, ranking),
    /// and its build composes the toolkit component around it, which decodes and preprocesses.
    #[arg(long, value_enum)]
    pub lang: GuestLang,

    /// Where to write the project (default ./NAME); it must be absent or empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The toolkit component copied into python and js projects (default: the build output
    /// beside the default guest; the container image sets it).
    #[arg(
        long,
        value_name = "FILE",
        env = "MOTION_HOST_TOOLKIT",
        default_value = "target/wasm32-wasip2/release/motion_toolkit.wasm"
    )]
    pub toolkit: PathBuf,

    /// For rust: depend on the motion-guest-sdk at this path (the sdk/ directory of a checkout)
    /// instead of the copy of this server's SDK written into the project's vendor/ directory.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuestLang {
    Rust,
    Python,
    Js,
}

impl GuestLang {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestLang::Rust => "rust",
            GuestLang::Python => "python",
            GuestLang::Js => "js",
        }
    }
}

#[derive(Debug, Args)]
pub struct GuestCheckArgs {
    /// The guest component (.wasm).
    pub file: PathBuf,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Where models come from and the limits every guest runs under: shared by `serve` and
/// `guest check`, so a check judges a guest as a server would.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Directory of models: each subdirectory holding a `model.toml` is loaded at start and
    /// served to guests by its name.
    #[arg(long, value_name = "DIR", env = "MOTION_HOST_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,

    /// Most linear memory one guest instance may grow to, in bytes (256 MiB). Validation's
    /// sample uploads (8 MiB or more each) run within it too: the default guest needs about
    /// 52 MiB for them.
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_GUEST_MEMORY_BYTES", default_value_t = Limits::defaults().memory_bytes)]
    pub guest_memory_bytes: usize,

    /// Most wasm instances one guest may create (a component holds several).
    #[arg(long, value_name = "N", env = "MOTION_HOST_GUEST_MAX_INSTANCES", default_value_t = Limits::defaults().instances)]
    pub guest_max_instances: usize,

    /// Most wasm tables one guest may create.
    #[arg(long, value_name = "N", env = "MOTION_HOST_GUEST_MAX_TABLES", default_value_t = Limits::defaults().tables)]
    pub guest_max_tables: usize,

    /// Most elements one guest table may grow to.
    #[arg(long, value_name = "N", env = "MOTION_HOST_GUEST_MAX_TABLE_ELEMENTS", default_value_t = Limits::defaults().table_elements)]
    pub guest_max_table_elements: usize,

    /// Longest a guest may run for one request (e.g. `5s`, `500ms`); past it the request gets
    /// 504 guest_timeout. Guest code yields every 10 ms, so a spinning guest holds no thread.
    /// Validation's sample uploads run within it too (the default guest takes up to ~300 ms).
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_GUEST_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub guest_deadline: Duration,

    /// Most bytes a guest may pass to the host in one call (a tensor, a name) or in the result
    /// it returns, strings and lists counted together (32 MiB).
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_GUEST_MAX_TRANSFER_BYTES", default_value_t = Limits::defaults().transfer_bytes)]
    pub guest_max_transfer_bytes: usize,

    /// Most bytes of labels and scores a guest's result may hold (64 KiB).
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_GUEST_MAX_RESULT_BYTES", default_value_t = Limits::defaults().result_bytes)]
    pub guest_max_result_bytes: usize,

    /// Most wasi:nn calls (resource drops aside) one request's guest may make.
    #[arg(long, value_name = "N", env = "MOTION_HOST_GUEST_MAX_NN_CALLS", default_value_t = Limits::defaults().nn_calls)]
    pub guest_max_nn_calls: u32,

    /// Most tensor bytes one request's guest may hand to wasi:nn in all (64 MiB).
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_GUEST_MAX_NN_BYTES", default_value_t = Limits::defaults().nn_bytes)]
    pub guest_max_nn_bytes: usize,

    /// The nice value guest code runs at, 0 (the server's own priority) to 19: while a forward
    /// pass runs on the CPU, the kernel gives its threads the cores before guests.
    #[arg(long, value_name = "N", env = "MOTION_HOST_GUEST_NICE", default_value_t = Limits::defaults().nice, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub guest_nice: i32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, repeatable: `[::]:PORT`, `0.0.0.0:PORT`, `127.0.0.1:PORT`,
    /// `[::1]:PORT` or `HOST:PORT`. `[::]` accepts IPv4 clients too. Default: `[::]:$PORT`
    /// when PORT is set, else `[::]:8000`.
    #[arg(long = "bind", value_name = "ADDR", env = "MOTION_HOST_BIND", value_delimiter = ',')]
    pub bind: Vec<String>,

    /// Address of a listener that serves gRPC alone (the Open Inference Protocol's
    /// `inference.GRPCInferenceService` and `grpc.health.v1.Health`), repeatable, with the same
    /// TLS as --bind. gRPC is served on the --bind listeners too; this is for platforms that
    /// route gRPC to a port of its own. Default: none.
    #[arg(long = "grpc-bind", value_name = "ADDR", env = "MOTION_HOST_GRPC_BIND", value_delimiter = ',')]
    pub grpc_bind: Vec<String>,

    /// TLS certificate chain (PEM). Needs --tls-key. Default: TLS_CERTFILE, then
    /// `tls.crt` in --tls-dir, else plain HTTP.
    #[arg(long, value_name = "FILE", env = "TLS_CERTFILE")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) matching --tls-cert. Default: TLS_KEYFILE, then `tls.key` in
    /// --tls-dir.
    #[arg(long, value_name = "FILE", env = "TLS_KEYFILE")]
    pub tls_key: Option<PathBuf>,

    /// Directory where the platform mounts `tls.crt` and `tls.key`, used when no certificate
    /// is given by flag or TLS_CERTFILE/TLS_KEYFILE.
    #[arg(long, value_name = "DIR", env = "TLS_DIR", default_value = "/etc/motion-host/tls")]
    pub tls_dir: PathBuf,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Guest component to load, as NAME=PATH or PATH (named after the file stem); repeatable.
    /// The first is the default guest.
    #[arg(
        long = "guest",
        value_name = "[NAME=]PATH",
        env = "MOTION_HOST_GUEST",
        value_delimiter = ',',
        default_value = "motion=target/wasm32-wasip2/release/motion_guest.wasm"
    )]
    pub guests: Vec<String>,

    /// Directory of guests: each `NAME.wasm` loads at start as guest NAME, and the directory is
    /// watched so a new or replaced file is validated and swapped in while serving. When given,
    /// the default --guest is not loaded (explicit --guest values still are).
    #[arg(long, value_name = "DIR", env = "MOTION_HOST_GUEST_DIR")]
    pub guest_dir: Option<PathBuf>,

    /// Directory of compiled guests, so a restart or a swap back to a known version skips
    /// compilation; `off` disables it.
    #[arg(
        long,
        value_name = "DIR",
        env = "MOTION_HOST_COMPILE_CACHE",
        default_value = "/tmp/motion-host/compiled"
    )]
    pub compile_cache: PathBuf,

    /// What profilers learn of guest code: `off`, or `perfmap`, which lists every compiled guest
    /// function in `/tmp/perf-PID.map` so `perf record -p PID` names them (by the component's
    /// name section where it keeps one). The file stays after the server exits.
    #[arg(long, value_name = "PROFILER", env = "MOTION_HOST_GUEST_PROFILER", default_value = "off")]
    pub guest_profiler: motion_runtime::GuestProfiler,

    /// The guest that answers /v1/classify. Default: the first guest loaded.
    #[arg(long, value_name = "NAME", env = "MOTION_HOST_DEFAULT_GUEST")]
    pub default_guest: Option<String>,

    /// File holding the bearer token of the admin API (/admin/*). Without it the admin routes
    /// answer 404.
    #[arg(long, value_name = "FILE", env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Allow the admin API over plain HTTP on a non-loopback address (refused by default).
    #[arg(long, env = "MOTION_HOST_ALLOW_INSECURE_ADMIN")]
    pub allow_insecure_admin: bool,

    /// Where the model runs: `auto` (CUDA when a GPU is usable, else CPU), `cpu`, `cuda` or
    /// `cuda:N`.
    #[arg(long, value_name = "DEVICE", env = "MOTION_HOST_DEVICE", default_value = "auto")]
    pub device: String,

    /// What the model's weights and forward pass run in: `fp32`, `bf16` (on a CUDA device, or a
    /// CPU with the avx512_bf16 or amx_bf16 flag) or `fp16` (CUDA only). Tensors crossing
    /// wasi:nn stay FP32. A reduced precision is served only when the model's manifest records
    /// its held-out top-1 ([evaluation.precision]) within 0.5 points of fp32's.
    #[arg(long, value_name = "PRECISION", env = "MOTION_HOST_PRECISION", default_value = "fp32")]
    pub precision: motion_model::Precision,

    /// Run each model's TorchScript module as its file has it. By default an FP32 model on the
    /// CPU is frozen and optimised for inference as it loads (`torch.jit.optimize_for_inference`:
    /// batch norm folded into the convolutions, which run in oneDNN's layout), and a module that
    /// cannot be runs as it is, with a warning.
    #[arg(long, env = "MOTION_HOST_PLAIN_MODEL")]
    pub plain_model: bool,

    /// libtorch intra-op threads per model. Default: the CPUs this process may use (cgroup
    /// quota included).
    #[arg(long, value_name = "N", env = "MOTION_HOST_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,

    /// Largest request body accepted, in bytes (64 MiB); larger bodies get 413 while being read.
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bytes all request bodies being read may hold at once (1 GiB), taken as they arrive;
    /// past it an upload gets 503 with Retry-After. At least --max-body-bytes.
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_MAX_UPLOAD_MEMORY", default_value_t = 1024 * 1024 * 1024)]
    pub max_upload_memory: usize,

    /// Slowest request body accepted, in bytes per second (1024): a body that sends less than
    /// this times 5 in any 5 s gets 408 and its connection is closed. 0 turns the check off.
    #[arg(long, value_name = "BYTES", env = "MOTION_HOST_MIN_UPLOAD_RATE", default_value_t = 1024)]
    pub min_upload_rate: u64,

    /// Most client connections open at once. Past it, 32 more are taken that serve only
    /// /health (for the platform's probes); past those, connections are closed on accept.
    /// Default: three quarters of the descriptor limit (raised to its hard limit at start) less
    /// a reserve of 288.
    #[arg(long, value_name = "N", env = "MOTION_HOST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections open at once from one client address (256); past it, closed on
    /// accept. 0 for no cap (behind a proxy that makes every client one address).
    #[arg(long, value_name = "N", env = "MOTION_HOST_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// How long a connection may stay open with no request in progress (after its TLS
    /// handshake, between HTTP/1.1 requests, on HTTP/2 with no stream) before it is closed.
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most classification requests served at once; more get 503 with Retry-After.
    #[arg(long, value_name = "N", env = "MOTION_HOST_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Most rows in one forward pass: concurrent calls to a model are batched up to this.
    #[arg(long, value_name = "N", env = "MOTION_HOST_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,

    /// How long the first call of a batch waits for the calls of requests already being
    /// prepared or whose body is arriving (for its first 5 ms) (e.g. `2ms`); `0` runs what is
    /// queued without waiting. Default: 50ms on the CPU, where a forward pass would leave those
    /// requests waiting its whole length; 2ms on a GPU.
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_MAX_BATCH_DELAY", value_parser = parse_duration)]
    pub max_batch_delay: Option<Duration>,

    /// Most inference calls waiting for each model; more get 503 with Retry-After.
    #[arg(long, value_name = "N", env = "MOTION_HOST_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,

    /// Canary requests before a canary's failure rate is judged (50); see
    /// --canary-max-fault-rate.
    #[arg(long, value_name = "N", env = "MOTION_HOST_CANARY_MIN_REQUESTS", default_value_t = 50)]
    pub canary_min_requests: u64,

    /// How far a canary's rate of guest_fault and guest_timeout answers may exceed the live
    /// version's (0.05) before the server removes the canary by itself; 4xx answers never count.
    #[arg(long, value_name = "RATE", env = "MOTION_HOST_CANARY_MAX_FAULT_RATE", default_value_t = 0.05)]
    pub canary_max_fault_rate: f64,

    /// Makes a canary live by itself once it has answered N requests within
    /// --canary-max-fault-rate (at least --canary-min-requests). Unset: promotion is an
    /// operator's decision (POST /admin/guests/{name}/promote).
    #[arg(long, value_name = "N", env = "MOTION_HOST_CANARY_AUTO_PROMOTE_AFTER")]
    pub canary_auto_promote_after: Option<u64>,

    /// Longest a request may take from its headers to its answer, body upload included; a body
    /// still arriving then gets 408, anything else 504. A client may ask for less with
    /// X-Request-Timeout (seconds) or, on /v2, the 'timeout' parameter (microseconds).
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest a client may take to send a request's headers before the connection is closed.
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// After SIGTERM, how long new connections are still accepted (readiness already off) while
    /// the platform stops routing here; counted within --shutdown-timeout.
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_SHUTDOWN_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long in-flight requests may take to finish after SIGTERM, grace period included;
    /// a second signal exits at once.
    #[arg(long, value_name = "DURATION", env = "MOTION_HOST_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Where the server records its addresses and scheme for `motion-host healthcheck`.
    #[arg(
        long,
        value_name = "FILE",
        env = "MOTION_HOST_STATE_FILE",
        default_value = "/tmp/motion-host/serve.json"
    )]
    pub state_file: PathBuf,

    /// Log format: `auto` (JSON lines unless stdout is a terminal), `json` or `text`.
    #[arg(long, value_name = "FORMAT", env = "MOTION_HOST_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// URL of the server's health endpoint. Default: read from the server's state file.
    #[arg(long, value_name = "URL", env = "MOTION_HOST_HEALTHCHECK_URL")]
    pub url: Option<String>,

    /// The server's state file, read when --url is absent.
    #[arg(
        long,
        value_name = "FILE",
        env = "MOTION_HOST_STATE_FILE",
        default_value = "/tmp/motion-host/serve.json"
    )]
    pub state_file: PathBuf,

    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl RuntimeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.guest_memory_bytes,
            instances: self.guest_max_instances,
            tables: self.guest_max_tables,
            table_elements: self.guest_max_table_elements,
            deadline: self.guest_deadline,
            transfer_bytes: self.guest_max_transfer_bytes,
            result_bytes: self.guest_max_result_bytes,
            nn_calls: self.guest_max_nn_calls,
            nn_bytes: self.guest_max_nn_bytes,
            nice: self.guest_nice,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("'{s}' is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit '{other}' in '{s}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn both_bind_spellings_parse() {
        for argv in [
            vec!["motion-host", "serve", "--bind=[::]:30751"],
            vec!["motion-host", "serve", "--bind", "[::]:30751"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Serve(args) = cli.command else { panic!("not serve") };
            assert_eq!(args.bind, vec!["[::]:30751"]);
        }
    }
}
