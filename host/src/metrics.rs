//! Prometheus metrics, served at `/metrics` in the text exposition format (0.0.4).
//!
//! Names follow Prometheus conventions: the `motion_host_` prefix, base units (`_seconds`),
//! `_total` on counters. Label values are bounded: routes are the router's templates (never
//! the raw path), methods outside the standard set are `other`, guests are the installed names.
//! The info gauges are rebuilt from the live model and guest set at every scrape, so a swapped
//! guest's old version disappears from them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The media type of the exposition format served.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Versions no longer held whose per-version series are still shown, per guest.
const GONE_VERSIONS_KEPT: usize = 4;
/// The stages a request can be given up in.
const STAGES: [&str; 4] = ["body", "guest", "queue", "inference"];
/// Rows in a forward pass: powers of two up to the most one call may carry.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// How many observations a histogram series holds and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTotals {
    pub count: u64,
    pub time: Duration,
}

impl StageTotals {
    fn of(histogram: &HistogramVec, labels: &[&str]) -> StageTotals {
        match histogram.get_metric_with_label_values(labels) {
            Ok(h) => StageTotals {
                count: h.get_sample_count(),
                time: Duration::try_from_secs_f64(h.get_sample_sum()).unwrap_or_default(),
            },
            Err(_) => StageTotals::default(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub grpc_requests: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub connections_closed_idle: prometheus::IntCounter,
    pub uploads_too_slow: prometheus::IntCounter,
    requests_cancelled: IntCounterVec,
    requests_deadline_exceeded: IntCounterVec,
    guest_stores_open: IntGauge,
    stage_duration: HistogramVec,
    failure_duration: HistogramVec,
    batch_size: HistogramVec,
    guest_swaps: IntCounterVec,
    guest_validation_failures: IntCounterVec,
    guest_traps: IntCounterVec,
    guest_timeouts: IntCounterVec,
    guest_limit_hits: IntCounterVec,
    version_requests: IntCounterVec,
    version_duration: HistogramVec,
    /// Per (guest, digest): the codes seen, and when it last answered (a sequence number), so
    /// the series of versions long gone can be dropped.
    version_codes: Mutex<BTreeMap<(String, String), (BTreeSet<&'static str>, u64)>>,
    /// Classifications answered so far: the sequence numbers above.
    answers: AtomicU64,
    canaries_ended: IntCounterVec,
    model_info: IntGaugeVec,
    guest_info: IntGaugeVec,
    /// One scrape at a time: each rebuilds the info gauges.
    scrape: Mutex<()>,
}

/// A loaded model, as the `model_info` gauge labels it.
pub struct ModelInfo<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `fp32`, `bf16` or `fp16` (`--precision`).
    pub precision: &'a str,
}

/// A live guest, as the `guest_info` gauge labels it.
pub struct GuestInfo<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
    pub model: &'a str,
    pub default: bool,
    /// `live`, or `canary` for a version taking a share of its name's traffic.
    pub role: &'a str,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
    registry.register(Box::new(c.clone())).expect("a unique metric name");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("a valid histogram");
    registry.register(Box::new(h.clone())).expect("a unique metric name");
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
    registry.register(Box::new(g.clone())).expect("a unique metric name");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("motion_host".into()), None).expect("a valid prefix");
        let r = &registry;
        let http_in_flight = IntGauge::new("http_requests_in_flight", "HTTP requests being served now.")
            .expect("a valid gauge");
        registry.register(Box::new(http_in_flight.clone())).expect("a unique metric name");
        let connections_open =
            IntGauge::new("connections_open", "Client connections open now.").expect("a valid gauge");
        registry.register(Box::new(connections_open.clone())).expect("a unique metric name");
        let connections_closed_idle = prometheus::IntCounter::new(
            "connections_closed_idle_total",
            "Connections closed after --idle-timeout with no request in progress.",
        )
        .expect("a valid counter");
        registry.register(Box::new(connections_closed_idle.clone())).expect("a unique metric name");
        let uploads_too_slow = prometheus::IntCounter::new(
            "uploads_too_slow_total",
            "Request bodies refused for arriving slower than --min-upload-rate.",
        )
        .expect("a valid counter");
        registry.register(Box::new(uploads_too_slow.clone())).expect("a unique metric name");
        let guest_stores_open = IntGauge::new(
            "guest_stores_open",
            "Guest stores alive now, each holding a pooled instance (requests in their guest, validations).",
        )
        .expect("a valid gauge");
        registry.register(Box::new(guest_stores_open.clone())).expect("a unique metric name");
        let build = gauge(r, "build_info", "The server's version; always 1.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Metrics {
            http_requests: counter(
                r,
                "http_requests_total",
                "HTTP requests answered, by route template, method and status code.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                r,
                "http_request_duration_seconds",
                "Time from a request's arrival to its response headers, by route template.",
                LATENCY_BUCKETS,
                &["route"],
            ),
            http_in_flight,
            grpc_requests: counter(
                r,
                "grpc_requests_total",
                "gRPC calls answered (each message of a stream is one), by route (the RPC's path) \
                 and gRPC status code (OK, INVALID_ARGUMENT, …).",
                &["route", "grpc_code"],
            ),
            connections_open,
            connections_refused: counter(
                r,
                "connections_refused_total",
                "Connections closed as soon as they were accepted, by the cap they were over \
                 (max_connections, max_connections_per_ip).",
                &["reason"],
            ),
            connections_closed_idle,
            uploads_too_slow,
            requests_cancelled: counter(
                r,
                "requests_cancelled_total",
                "Inference requests whose client went away before the answer, by the stage they \
                 had reached (body, guest, queue, inference); their work stopped there.",
                &["stage"],
            ),
            requests_deadline_exceeded: counter(
                r,
                "requests_deadline_exceeded_total",
                "Inference requests answered 504 at their deadline, by the stage they had reached \
                 (body, guest, queue, inference); their work stopped there.",
                &["stage"],
            ),
            guest_stores_open,
            stage_duration: histogram(
                r,
                "stage_duration_seconds",
                "Time an inference request spent in each stage (queue, preprocess, inference, \
                 postprocess, total), by model and guest (empty for the raw model).",
                LATENCY_BUCKETS,
                &["stage", "model", "guest"],
            ),
            failure_duration: histogram(
                r,
                "failed_inference_duration_seconds",
                "Time an inference request that failed once its model was running it took, by \
                 model and guest (empty for the raw model).",
                LATENCY_BUCKETS,
                &["model", "guest"],
            ),
            batch_size: histogram(
                r,
                "inference_batch_size",
                "Rows in each forward pass, by model.",
                BATCH_BUCKETS,
                &["model"],
            ),
            guest_swaps: counter(
                r,
                "guest_swaps_total",
                "Guest versions made live (installs, replacements and rollbacks), by guest.",
                &["guest"],
            ),
            guest_validation_failures: counter(
                r,
                "guest_validation_failures_total",
                "Guests refused before going live (compile, link, info() or a sample clip), by guest.",
                &["guest"],
            ),
            guest_traps: counter(r, "guest_traps_total", "Guest calls that trapped, by guest.", &["guest"]),
            guest_timeouts: counter(
                r,
                "guest_timeouts_total",
                "Guest calls stopped at their deadline, by guest.",
                &["guest"],
            ),
            guest_limit_hits: counter(
                r,
                "guest_limit_hits_total",
                "Guest calls stopped by a resource limit, by guest and limit.",
                &["guest", "limit"],
            ),
            version_requests: counter(
                r,
                "guest_version_requests_total",
                "Classifications answered by each guest version (live or canary), by guest, digest \
                 and outcome code (ok, or the error code).",
                &["guest", "digest", "code"],
            ),
            version_duration: histogram(
                r,
                "guest_version_request_duration_seconds",
                "Time each guest version (live or canary) took to answer, by guest and digest.",
                LATENCY_BUCKETS,
                &["guest", "digest"],
            ),
            version_codes: Mutex::new(BTreeMap::new()),
            answers: AtomicU64::new(0),
            canaries_ended: counter(
                r,
                "guest_canaries_ended_total",
                "Canaries ended, by guest, outcome (promoted, rolled_back) and whether the server \
                 did it by itself (automatic: true) or an operator asked.",
                &["guest", "outcome", "automatic"],
            ),
            model_info: gauge(
                r,
                "model_info",
                "Each loaded model's version, file digest, device and precision; always 1.",
                &["model", "version", "sha256", "device", "precision"],
            ),
            guest_info: gauge(
                r,
                "guest_info",
                "Each live guest's version, digest, model, whether it is the default, and its role \
                 (live, or canary beside the live version); always 1.",
                &["guest", "version", "digest", "model", "default", "role"],
            ),
            registry,
            scrape: Mutex::new(()),
        };
        // Every stage is shown from the start, at 0, so a rate over it is defined.
        for stage in STAGES {
            metrics.requests_cancelled.with_label_values(&[stage]);
            metrics.requests_deadline_exceeded.with_label_values(&[stage]);
        }
        metrics
    }

    /// An inference request whose client went away in `stage`.
    pub fn request_cancelled(&self, stage: &str) {
        self.requests_cancelled.with_label_values(&[stage]).inc();
    }

    /// An inference request stopped at its deadline in `stage`.
    pub fn request_deadline_exceeded(&self, stage: &str) {
        self.requests_deadline_exceeded.with_label_values(&[stage]).inc();
    }

    /// A forward pass of `rows` rows on `model`.
    pub fn observe_batch(&self, model: &str, rows: usize) {
        self.batch_size.with_label_values(&[model]).observe(rows as f64);
    }

    /// Where an inference request's time went: each stage's name and duration.
    pub fn observe_stages(&self, model: &str, guest: &str, stages: &[(&str, Duration)]) {
        for (stage, d) in stages {
            self.stage_duration.with_label_values(&[stage, model, guest]).observe(d.as_secs_f64());
        }
    }

    /// An inference request on `model` (through `guest`, or raw) that failed after `elapsed`.
    pub fn inference_failed(&self, model: &str, guest: &str, elapsed: Duration) {
        self.failure_duration.with_label_values(&[model, guest]).observe(elapsed.as_secs_f64());
    }

    /// The requests observed in `stage` on `model` through `guest` (empty for the raw model),
    /// and their time.
    pub fn stage_totals(&self, stage: &str, model: &str, guest: &str) -> StageTotals {
        StageTotals::of(&self.stage_duration, &[stage, model, guest])
    }

    /// The inference requests on `model` through `guest` that failed, and their time.
    pub fn failures(&self, model: &str, guest: &str) -> StageTotals {
        StageTotals::of(&self.failure_duration, &[model, guest])
    }

    /// Forward passes run on `model`.
    pub fn batches(&self, model: &str) -> u64 {
        self.batch_size.get_metric_with_label_values(&[model]).map_or(0, |h| h.get_sample_count())
    }

    pub fn guest_swapped(&self, guest: &str) {
        self.guest_swaps.with_label_values(&[guest]).inc();
    }

    pub fn guest_rejected(&self, guest: &str) {
        self.guest_validation_failures.with_label_values(&[guest]).inc();
    }

    /// A guest call that trapped. Other failures (bad input, a busy model) are the request's,
    /// not the guest's, and are counted by status in `http_requests_total`.
    pub fn guest_trapped(&self, guest: &str) {
        self.guest_traps.with_label_values(&[guest]).inc();
    }

    /// A guest call that ran past its deadline.
    pub fn guest_timed_out(&self, guest: &str) {
        self.guest_timeouts.with_label_values(&[guest]).inc();
    }

    /// A guest call stopped by one of its limits (the flag's name without dashes).
    pub fn guest_hit_limit(&self, guest: &str, limit: &str) {
        self.guest_limit_hits.with_label_values(&[guest, limit]).inc();
    }

    /// A classification answered by version `digest` of `guest`, with `code` (`ok` or the
    /// error code), after `elapsed`.
    pub fn version_answered(&self, guest: &str, digest: &str, code: &'static str, elapsed: Duration) {
        self.version_requests.with_label_values(&[guest, digest, code]).inc();
        self.version_duration.with_label_values(&[guest, digest]).observe(elapsed.as_secs_f64());
        let sequence = self.answers.fetch_add(1, Ordering::Relaxed) + 1;
        let mut versions = self.version_codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (codes, last) = versions.entry((guest.to_string(), digest.to_string())).or_default();
        codes.insert(code);
        *last = (*last).max(sequence);
    }

    /// Drops the per-version series of versions no longer held (live, canary or in history)
    /// beyond the [`GONE_VERSIONS_KEPT`] that answered last per guest (a canary rolled back
    /// stays visible a while), so uploads do not grow the exposition without bound.
    pub fn keep_versions(&self, held: &[(&str, &str)]) {
        let mut versions = self.version_codes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut gone: Vec<(u64, String, String)> = versions
            .iter()
            .filter(|((g, d), _)| !held.iter().any(|(hg, hd)| hg == g && hd == d))
            .map(|((g, d), (_, last))| (*last, g.clone(), d.clone()))
            .collect();
        gone.sort_by_key(|(last, _, _)| std::cmp::Reverse(*last));
        let mut kept: BTreeMap<String, usize> = BTreeMap::new();
        for (_, guest, digest) in gone {
            let n = kept.entry(guest.clone()).or_default();
            *n += 1;
            if *n <= GONE_VERSIONS_KEPT {
                continue;
            }
            if let Some((codes, _)) = versions.remove(&(guest.clone(), digest.clone())) {
                for code in codes {
                    let _ = self.version_requests.remove_label_values(&[guest.as_str(), &digest, code]);
                }
                let _ = self.version_duration.remove_label_values(&[guest.as_str(), &digest]);
            }
        }
    }

    /// A canary ended: `promoted` or `rolled_back`, by the server itself or an operator.
    pub fn canary_ended(&self, guest: &str, outcome: &str, automatic: bool) {
        let automatic = if automatic { "true" } else { "false" };
        self.canaries_ended.with_label_values(&[guest, outcome, automatic]).inc();
    }

    /// The exposition text, with the info gauges rebuilt from what is live now (nothing while
    /// starting), gathered by the caller.
    pub fn render(&self, models: &[ModelInfo], guests: &[GuestInfo], stores_open: usize) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.guest_stores_open.set(stores_open as i64);
        self.model_info.reset();
        self.guest_info.reset();
        for m in models {
            self.model_info.with_label_values(&[m.name, m.version, m.sha256, &m.device, m.precision]).set(1);
        }
        for g in guests {
            let default = if g.default { "true" } else { "false" };
            self.guest_info
                .with_label_values(&[g.name, g.version, g.digest, g.model, default, g.role])
                .set(1);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
