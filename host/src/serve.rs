//! `motion-host serve`, in three steps: every setting checked ([`ServeConfig`]), the listeners
//! opened at once (so `/health` answers `starting` while loading), then the models and guests
//! loaded; it serves until SIGTERM/SIGINT and drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsAcceptor;
use clap::ArgMatches;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::boot;
use crate::cli::ServeArgs;
use crate::config::{GuestSpec, ServeConfig};
use crate::http::connections::{self, Admit, Connections};
use crate::http::{self, AppState};
use crate::platform::state::ServeState;
use crate::platform::tls::TlsPlan;
use crate::platform::{bind, tls};
use crate::service::{Origin, Service};
use motion_model::{DeviceChoice, Tuning};

pub async fn run(args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    // Everything is checked before a socket opens.
    let descriptors = connections::raise_descriptor_limit();
    let config = ServeConfig::new(&args, matches, std::env::var("PORT").ok().as_deref(), descriptors)?;
    let ServeConfig {
        addrs,
        bind_source,
        grpc_addrs,
        plan,
        tls_config,
        guest_specs,
        admin,
        tuning,
        connection_limits,
        canary,
    } = config;
    let max_connections = connection_limits.max;

    let listeners = addrs.iter().map(|&a| bind::listen(a)).collect::<Result<Vec<_>, _>>()?;
    let bound: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let grpc_listeners = grpc_addrs.iter().map(|&a| bind::listen(a)).collect::<Result<Vec<_>, _>>()?;
    let grpc_bound: Vec<SocketAddr> =
        grpc_listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let scheme = if tls_config.is_some() { "https" } else { "http" };

    let admin_exposed_in_plain_text = tls_config.is_none() && bound.iter().any(|a| !a.ip().is_loopback());
    if admin.is_some() && admin_exposed_in_plain_text && !args.allow_insecure_admin {
        tracing::warn!(
            "admin API refused: plain HTTP on a non-loopback address (serve TLS, or pass --allow-insecure-admin)"
        );
    }
    let connections = Connections::new(connection_limits);
    tracing::info!(
        max_connections,
        max_connections_per_ip = args.max_connections_per_ip,
        idle_timeout_s = args.idle_timeout.as_secs_f64(),
        descriptor_limit = descriptors,
        max_upload_memory = args.max_upload_memory,
        min_upload_rate = args.min_upload_rate,
        "connection limits"
    );
    let service = Service::new(canary);
    let app = AppState::new(
        Arc::clone(&service),
        http::Settings {
            max_body_bytes: args.max_body_bytes,
            max_upload_memory: args.max_upload_memory,
            min_upload_rate: args.min_upload_rate,
            max_in_flight: args.max_in_flight,
            request_timeout: args.request_timeout,
            admin,
            admin_exposed_in_plain_text,
            allow_insecure_admin: args.allow_insecure_admin,
        },
    );
    let router = http::router(Arc::clone(&app));
    let grpc_router = http::grpc_router(Arc::clone(&app));
    let handle = Handle::new();
    let mut servers = tokio::task::JoinSet::new();
    let routed = listeners
        .into_iter()
        .map(|l| (l, &router))
        .chain(grpc_listeners.into_iter().map(|l| (l, &grpc_router)));
    for (listener, router) in routed {
        let service = router.clone().into_make_service_with_connect_info::<SocketAddr>();
        let handle = handle.clone();
        let header_timeout = args.header_timeout;
        let admit = Admit(Arc::clone(&connections));
        match &tls_config {
            Some(config) => {
                // One configuration for all listeners, so a reloaded certificate reaches each.
                let acceptor = RustlsAcceptor::new(config.clone()).acceptor(admit);
                let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
                http_timeouts(server.http_builder(), header_timeout);
                servers.spawn(async move { server.handle(handle).serve(service).await });
            }
            None => {
                let mut server = axum_server::from_tcp(listener).acceptor(admit);
                http_timeouts(server.http_builder(), header_timeout);
                servers.spawn(async move { server.handle(handle).serve(service).await });
            }
        }
    }

    let urls: Vec<String> = bound.iter().map(|a| format!("{scheme}://{a}")).collect();
    let tls_line = match &plan {
        TlsPlan::Files { cert, key, source } => {
            format!(
                "TLS on (TLS 1.2/1.3, ALPN h2/http1.1) from {source}: cert {}, key {}",
                cert.display(),
                key.display()
            )
        }
        TlsPlan::Plain => format!(
            "TLS off: no --tls-cert/--tls-key, no TLS_CERTFILE/TLS_KEYFILE, nothing in {}",
            args.tls_dir.display()
        ),
    };
    tracing::info!(
        addresses = ?urls,
        bind_from = %bind_source,
        tls = scheme == "https",
        state_file = %args.state_file.display(),
        "listening on {} (bind from {bind_source}); {tls_line}",
        urls.join(", ")
    );
    if !grpc_bound.is_empty() {
        let urls: Vec<String> = grpc_bound.iter().map(|a| format!("{scheme}://{a}")).collect();
        tracing::info!(addresses = ?urls, "gRPC alone also on {} (--grpc-bind)", urls.join(", "));
    }
    if tls_config.is_none() {
        tracing::warn!(
            "serving plain HTTP: mount tls.crt and tls.key in {} or pass --tls-cert/--tls-key",
            args.tls_dir.display()
        );
    }
    let cert_path = match &plan {
        TlsPlan::Files { cert, .. } => Some(cert.clone()),
        TlsPlan::Plain => None,
    };
    let _tls_watcher = match (&plan, &tls_config) {
        (TlsPlan::Files { cert, key, .. }, Some(config)) => {
            match tls::watch(config.clone(), cert.clone(), key.clone()) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the TLS files: a new certificate needs a restart");
                    None
                }
            }
        }
        _ => None,
    };
    let state = ServeState::new(scheme, bound.clone(), cert_path);
    if let Err(e) = state.write(&args.state_file) {
        tracing::warn!(path = %args.state_file.display(), error = %e, "cannot write the state file; `motion-host healthcheck` will need --url");
    }

    let started = Instant::now();
    let mut _watcher = None;
    let load = load_everything(&args, &guest_specs, tuning, &service);
    tokio::pin!(load);
    let mut signals = Signals::new()?;
    tokio::select! {
        loaded = &mut load => {
            loaded?;
            if let Some(dir) = &args.guest_dir {
                _watcher = Some(crate::guest_dir::watch(Arc::clone(&service), dir.clone())?);
            }
            service.set_ready();
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "healthy: model and guests loaded and warmed up");
        }
        signal = signals.next() => {
            tracing::info!(signal, "stopping before the model finished loading");
            return Ok(());
        }
    }

    tokio::select! {
        signal = signals.next() => {
            service.set_draining();
            tracing::info!(
                signal,
                grace_s = args.shutdown_grace.as_secs_f64(),
                timeout_s = args.shutdown_timeout.as_secs_f64(),
                in_flight = app.in_flight(),
                "draining: readiness is off; new connections are taken for the grace period, then in-flight requests finish"
            );
            let drain = async {
                tokio::time::sleep(args.shutdown_grace).await;
                tracing::info!(in_flight = app.in_flight(), "grace period over: no new connections");
                handle.graceful_shutdown(Some(args.shutdown_timeout - args.shutdown_grace));
                while servers.join_next().await.is_some() {}
            };
            tokio::select! {
                _ = drain => {}
                signal = signals.next() => {
                    tracing::warn!(signal, in_flight = app.in_flight(), "second signal: exiting at once");
                }
            }
        }
        Some(ended) = servers.join_next() => {
            ended.context("a listener task failed")?.context("a listener stopped")?;
        }
    }
    let _ = std::fs::remove_file(&args.state_file);
    tracing::info!("stopped");
    Ok(())
}

/// HTTP/2 keep-alive pings: a peer that stops answering them is disconnected.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Closes connections whose request headers take longer than `timeout` to arrive (slow-loris
/// clients) and HTTP/2 connections whose peer no longer answers pings; the request body is
/// bounded by `--min-upload-rate` and `--request-timeout` in the handlers, an idle connection by
/// `--idle-timeout` (`http::connections`).
fn http_timeouts(builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>, timeout: Duration) {
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE);
}

/// Loads the models (on their inference threads, warm-up included) and the guests, and runs
/// each guest once on a built-in sample clip; the service serves them once this returns.
async fn load_everything(
    args: &ServeArgs,
    specs: &[GuestSpec],
    tuning: Tuning,
    service: &Service,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = DeviceChoice::resolve(&args.device)?;
    tracing::info!(
        device = %device.device,
        reason = %device.reason,
        inference_threads = tuning.threads,
        max_batch_size = tuning.max_batch,
        max_batch_delay_ms = tuning.batch_delay_on(device.device).as_secs_f64() * 1000.0,
        precision = %tuning.precision,
        "device chosen"
    );
    let batches: motion_model::BatchObserver =
        Arc::new(|model: &str, rows| crate::metrics::METRICS.observe_batch(model, rows));
    let models = boot::models(args.runtime.model_dir.clone(), device.clone(), tuning, batches).await?;
    for model in models.iter() {
        tracing::info!(
            model = model.name(),
            version = %model.manifest.version,
            sha256 = %model.sha256,
            device = %model.device,
            precision = %model.precision,
            optimised = model.optimised,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded and warmed up"
        );
    }
    service.set_models_loaded();

    let limits = args.runtime.limits();
    let cache = Some(args.compile_cache.clone()).filter(|dir| dir.as_os_str() != "off");
    let concurrency = u32::try_from(args.max_in_flight).unwrap_or(u32::MAX);
    service.attach(boot::runtime(models, limits, concurrency, cache, args.guest_profiler)?);
    if let Some(file) = args.guest_profiler.file() {
        tracing::info!(profiler = %args.guest_profiler, file = %file.display(), "guest functions are listed for profilers");
    }
    for spec in specs {
        let bytes = tokio::fs::read(&spec.path)
            .await
            .with_context(|| format!("guest '{}': cannot read '{}'", spec.name, spec.path.display()))?;
        service
            .install(&spec.name, bytes, Origin::Flag(&spec.path))
            .await
            .with_context(|| format!("guest '{}' from '{}' cannot load", spec.name, spec.path.display()))?;
    }
    if let Some(dir) = &args.guest_dir {
        crate::guest_dir::sync(service, dir).await.context("--guest-dir holds a guest that cannot load")?;
    }
    if service.live_guests().is_none_or(|set| set.is_empty()) {
        bail!(
            "no guest to serve: --guest-dir '{}' holds no NAME.wasm",
            args.guest_dir.as_deref().unwrap_or(std::path::Path::new("")).display()
        );
    }
    if let Some(name) = &args.default_guest {
        service.set_default(name).with_context(|| format!("--default-guest '{name}'"))?;
    }
    Ok(())
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
