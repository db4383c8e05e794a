//! `motion-host serve`'s settings, checked before anything opens: the addresses to bind, the
//! TLS pair (loaded, so a broken one stops start-up), the guests to load, the admin token, the
//! model threads and batching, the request, upload and connection limits, and `--device`'s
//! syntax. A [`ServeConfig`] is everything `serve` needs to bind at once; the files it names
//! (models, guests) are read while loading, after the listener answers `starting`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use axum_server::tls_rustls::RustlsConfig;
use clap::ArgMatches;
use clap::parser::ValueSource;
use motion_model::Tuning;

use crate::cli::ServeArgs;
use crate::http::connections::{self, ConnectionLimits};
use crate::http::{self, AdminToken};
use crate::platform::tls::{self, TlsPlan};
use crate::platform::{Source, bind};
use crate::service::CanaryPolicy;
use motion_runtime as runtime;

/// What `serve` was asked to do, checked.
pub struct ServeConfig {
    pub addrs: Vec<SocketAddr>,
    pub bind_source: Source,
    /// The `--grpc-bind` listeners' addresses.
    pub grpc_addrs: Vec<SocketAddr>,
    pub plan: TlsPlan,
    /// The loaded TLS pair, when there is one.
    pub tls_config: Option<RustlsConfig>,
    /// The `--guest`s to load (none when `--guest-dir` replaces the built-in default).
    pub guest_specs: Vec<GuestSpec>,
    pub admin: Option<AdminToken>,
    pub tuning: Tuning,
    pub connection_limits: ConnectionLimits,
    pub canary: CanaryPolicy,
}

impl ServeConfig {
    /// Checks `args` (`matches` tells where each value came from); `port_env` is `$PORT` and
    /// `descriptors` the descriptor limit in force, which `--max-connections`' default follows.
    pub fn new(
        args: &ServeArgs,
        matches: &ArgMatches,
        port_env: Option<&str>,
        descriptors: u64,
    ) -> anyhow::Result<ServeConfig> {
        let bind_source = source_of(matches, "bind", "--bind", "MOTION_HOST_BIND");
        let (addrs, bind_source) = bind::resolve(&args.bind, bind_source, port_env)?;
        let grpc_addrs = bind::parse_all("--grpc-bind", &args.grpc_bind)?;
        if let Some(both) = grpc_addrs.iter().find(|a| addrs.contains(a)) {
            bail!("--grpc-bind {both} is also a --bind address, which serves gRPC already");
        }
        let cert =
            args.tls_cert.clone().map(|p| (p, source_of(matches, "tls_cert", "--tls-cert", "TLS_CERTFILE")));
        let key =
            args.tls_key.clone().map(|p| (p, source_of(matches, "tls_key", "--tls-key", "TLS_KEYFILE")));
        let plan = tls::resolve(cert, key, &args.tls_dir)?;
        let tls_config = match &plan {
            TlsPlan::Files { cert, key, .. } => Some(RustlsConfig::from_config(tls::load(cert, key)?)),
            TlsPlan::Plain => None,
        };
        // With --guest-dir, the built-in default --guest gives way to the directory.
        let default_guests = matches.value_source("guests") == Some(ValueSource::DefaultValue);
        let guest_specs: Vec<GuestSpec> = if args.guest_dir.is_some() && default_guests {
            Vec::new()
        } else {
            args.guests.iter().map(|s| GuestSpec::parse(s)).collect::<anyhow::Result<_>>()?
        };
        if guest_specs.is_empty() && args.guest_dir.is_none() {
            bail!("no guest to serve: give --guest NAME=PATH or --guest-dir DIR");
        }
        let admin = match &args.admin_token_file {
            Some(path) => Some(http::AdminToken::read(path)?),
            None => None,
        };
        let threads = match args.inference_threads {
            Some(0) => bail!("--inference-threads must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        if args.max_batch_size == 0 {
            bail!("--max-batch-size must be at least 1");
        }
        let tuning = Tuning {
            threads,
            max_queue: args.max_queue,
            max_batch: args.max_batch_size,
            batch_delay: args.max_batch_delay,
            precision: args.precision,
            optimise: !args.plain_model,
        };

        if args.max_in_flight == 0 || args.max_queue == 0 {
            bail!("--max-in-flight and --max-queue must be at least 1");
        }
        if args.shutdown_grace > args.shutdown_timeout {
            bail!("--shutdown-grace must not exceed --shutdown-timeout");
        }
        if args.max_upload_memory < args.max_body_bytes {
            bail!(
                "--max-upload-memory ({}) must be at least --max-body-bytes ({})",
                args.max_upload_memory,
                args.max_body_bytes
            );
        }
        if args.idle_timeout.is_zero() {
            bail!("--idle-timeout must be more than 0");
        }
        let max_connections = match args.max_connections {
            Some(0) => bail!("--max-connections must be at least 1"),
            Some(n) => n,
            None => connections::default_max_connections(descriptors),
        };
        motion_model::DeviceChoice::check(&args.device)?;
        if !(0.0..=1.0).contains(&args.canary_max_fault_rate) {
            bail!("--canary-max-fault-rate must be between 0 and 1, got {}", args.canary_max_fault_rate);
        }
        if args.canary_min_requests == 0 {
            bail!("--canary-min-requests must be at least 1");
        }
        let canary = CanaryPolicy {
            min_requests: args.canary_min_requests,
            max_failure_rate: args.canary_max_fault_rate,
            auto_promote_after: args.canary_auto_promote_after,
        };

        Ok(ServeConfig {
            addrs,
            bind_source,
            grpc_addrs,
            plan,
            tls_config,
            guest_specs,
            admin,
            tuning,
            connection_limits: ConnectionLimits {
                max: max_connections,
                per_ip: args.max_connections_per_ip,
                idle: args.idle_timeout,
            },
            canary,
        })
    }
}

/// Where a flag's value came from, for the start-up log.
fn source_of(matches: &ArgMatches, id: &str, flag: &'static str, env: &'static str) -> Source {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Source::Flag(flag),
        Some(ValueSource::EnvVariable) => Source::Env(env),
        _ => Source::Default,
    }
}

/// A guest to load at start: the name it is installed under and its file.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestSpec {
    pub name: String,
    pub path: PathBuf,
}

impl GuestSpec {
    /// `NAME=PATH`, or `PATH` named after its file stem.
    pub fn parse(spec: &str) -> anyhow::Result<GuestSpec> {
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) => (runtime::check_name(name).map(|()| name.to_string()), PathBuf::from(path)),
            None => (runtime::name_from_file(Path::new(spec)), PathBuf::from(spec)),
        };
        let name = name.map_err(|reason| anyhow::anyhow!("--guest '{spec}': {reason}"))?;
        Ok(GuestSpec { name, path })
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};

    /// `motion-host serve ARGS` checked, with no TLS directory to find and 1024 descriptors.
    fn config(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let argv =
            ["motion-host", "serve", "--tls-dir=/nonexistent/tls"].into_iter().chain(args.iter().copied());
        let matches = Cli::command().try_get_matches_from(argv)?;
        let Command::Serve(serve) = Cli::from_arg_matches(&matches)?.command else { panic!("not serve") };
        let sub = matches.subcommand_matches("serve").expect("the serve subcommand");
        ServeConfig::new(&serve, sub, None, 1024)
    }

    fn error(args: &[&str]) -> String {
        match config(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_defaults_are_a_valid_config() {
        let c = config(&[]).unwrap();
        assert_eq!(c.addrs.len(), 1);
        assert_eq!(c.addrs[0].port(), 8000);
        assert!(matches!(c.plan, TlsPlan::Plain) && c.tls_config.is_none());
        assert_eq!(c.guest_specs.len(), 1);
        assert_eq!(c.guest_specs[0].name, "motion");
        assert!(c.admin.is_none());
        assert!(c.tuning.threads >= 1);
        assert_eq!(c.connection_limits.max, connections::default_max_connections(1024));
        assert_eq!(c.connection_limits.per_ip, 256);
        // --guest-dir replaces the built-in default guest.
        assert!(config(&["--guest-dir=/srv/guests"]).unwrap().guest_specs.is_empty());
    }

    #[test]
    fn every_bad_setting_is_refused_before_anything_opens() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bind=nonsense"], "nonsense"),
            (&["--tls-cert=/x.crt"], "--tls-key"),
            (&["--tls-cert=/nonexistent/x.crt", "--tls-key=/nonexistent/x.key"], "/nonexistent/x.crt"),
            (&["--guest=bad name=x.wasm"], "guest name 'bad name'"),
            (&["--admin-token-file=/nonexistent/token"], "/nonexistent/token"),
            (&["--inference-threads=0"], "--inference-threads must be at least 1"),
            (&["--max-batch-size=0"], "--max-batch-size must be at least 1"),
            (&["--max-queue=0"], "--max-in-flight and --max-queue must be at least 1"),
            (&["--shutdown-grace=30s"], "--shutdown-grace must not exceed --shutdown-timeout"),
            (&["--max-upload-memory=1"], "--max-upload-memory (1) must be at least --max-body-bytes"),
            (&["--idle-timeout=0s"], "--idle-timeout must be more than 0"),
            (&["--max-connections=0"], "--max-connections must be at least 1"),
            (&["--device=tpu"], "--device 'tpu'"),
        ];
        for (args, words) in cases {
            let e = error(args);
            assert!(e.contains(words), "{args:?}: '{e}' lacks '{words}'");
        }
    }

    #[test]
    fn guest_specs_parse() {
        assert_eq!(
            GuestSpec::parse("motion=a/b.wasm").unwrap(),
            GuestSpec { name: "motion".into(), path: "a/b.wasm".into() }
        );
        assert_eq!(
            GuestSpec::parse("/x/fast.wasm").unwrap(),
            GuestSpec { name: "fast".into(), path: "/x/fast.wasm".into() }
        );
        assert!(GuestSpec::parse("bad name=x.wasm").is_err());
        assert!(GuestSpec::parse("=x.wasm").is_err());
    }
}
