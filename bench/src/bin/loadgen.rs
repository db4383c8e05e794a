//! The benchmark's HTTP load generator: `concurrency` clients post the same body back to back
//! over one kept-alive HTTP/1.1 connection each, for a warm-up and then a measured period, and
//! the tool writes what it saw as JSON: throughput, latency percentiles, failures by status, and
//! the per-stage timings and batch sizes the server reported in its answers.
//!
//!     loadgen cert --dir DIR          # a self-signed localhost certificate (tls.crt, tls.key)
//!     loadgen run --url URL --body FILE --content-type TYPE --ca tls.crt -c 16 --out r.json
//!     loadgen run ... --content-type application/x-none --expect-status 415   # the exchange alone
//!     loadgen run --url http://127.0.0.1:8000/v2/models/motion/infer --body req.bin \
//!         --content-type application/octet-stream --header Inference-Header-Content-Length:151 ...

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "HTTP load generator for the motion-host benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a self-signed certificate for localhost, 127.0.0.1 and ::1 as DIR/tls.crt and DIR/tls.key.
    Cert {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Drives a server and writes the results as JSON.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// Where to post, e.g. https://localhost:8443/v1/classify.
    #[arg(long)]
    url: String,
    /// The request body, sent as is.
    #[arg(long)]
    body: PathBuf,
    #[arg(long)]
    content_type: String,
    /// Another request header, `NAME:VALUE`, repeatable (e.g. Triton's
    /// `Inference-Header-Content-Length` for the binary tensor extension).
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The certificate to trust (the server's own, self-signed).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Clients posting at once.
    #[arg(short, long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Where to write the results.
    #[arg(long)]
    out: PathBuf,
    /// The status an answer must have to count as one (default: any 2xx), e.g. 415 to time the
    /// exchange of a body a server reads whole and then refuses.
    #[arg(long)]
    expect_status: Option<u16>,
}

/// What one client saw of one answer in the measured period.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    failures: BTreeMap<String, u64>,
    /// Stage name → milliseconds, one entry per successful answer that reported it.
    stages: BTreeMap<String, Vec<f64>>,
    batch_sizes: Vec<f64>,
    /// The inference stage over the rows of its forward pass, one entry per answer.
    inference_per_row: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    url: String,
    content_type: String,
    body_bytes: usize,
    concurrency: usize,
    duration_s: f64,
    requests: usize,
    failures: BTreeMap<String, u64>,
    requests_per_s: f64,
    latency_ms: Percentiles,
    /// Mean of each stage the server reported (`timings_ms`), in ms.
    stages_ms: BTreeMap<String, f64>,
    /// Median of each stage, in ms.
    stages_p50_ms: BTreeMap<String, f64>,
    /// Mean rows per forward pass, when the server reports `batch_size`.
    mean_batch_size: Option<f64>,
    /// Mean of each answer's inference stage over its batch's rows: the forward pass's time
    /// per row, all passes' time over all their rows (ms).
    inference_per_row_ms: Option<f64>,
}

#[derive(Serialize)]
struct Percentiles {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Cert { dir } => cert(&dir),
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run(args))
        }
    }
}

fn cert(dir: &std::path::Path) -> anyhow::Result<()> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let key = rcgen::generate_simple_self_signed(names)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tls.crt"), key.cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.signing_key.serialize_pem())?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let bytes = std::fs::read(&args.body).with_context(|| format!("cannot read {}", args.body.display()))?;
    // Shared, so each request's body is a reference count, not a copy.
    let bytes = Bytes::from(bytes);

    // Every request carries the same headers: the content type and any --header.
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in std::iter::once(("content-type", args.content_type.as_str()))
        .chain(args.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("bad header name '{name}'"))?,
            reqwest::header::HeaderValue::from_str(value).with_context(|| format!("bad value for {name}"))?,
        );
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60));
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let client = builder.build()?;

    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, bytes, url) = (client.clone(), bytes.clone(), args.url.clone());
            let expect = args.expect_status;
            tokio::spawn(async move { drive(client, bytes, url, measure_from, stop_at, expect).await })
        })
        .collect();
    let mut seen = Seen::default();
    for client in clients {
        let s = client.await?;
        seen.latencies_us.extend(s.latencies_us);
        for (k, v) in s.failures {
            *seen.failures.entry(k).or_default() += v;
        }
        for (k, v) in s.stages {
            seen.stages.entry(k).or_default().extend(v);
        }
        seen.batch_sizes.extend(s.batch_sizes);
        seen.inference_per_row.extend(s.inference_per_row);
    }

    let report = summarise(&args, bytes.len(), seen);
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "c={:<3} {:>8.1} req/s  p50 {:>7.1} ms  p99 {:>7.1} ms  ({} ok, {} failed)",
        report.concurrency,
        report.requests_per_s,
        report.latency_ms.p50,
        report.latency_ms.p99,
        report.requests,
        report.failures.values().sum::<u64>()
    );
    Ok(())
}

/// One client: posts until `stop_at`, recording what finished inside the measured window.
async fn drive(
    client: reqwest::Client,
    body: Bytes,
    url: String,
    measure_from: Instant,
    stop_at: Instant,
    expect: Option<u16>,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            return seen;
        }
        let answer = client.post(&url).body(body.clone()).send().await;
        let outcome = match answer {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(text) if expect.map_or(status.is_success(), |want| status.as_u16() == want) => {
                        Ok(text)
                    }
                    Ok(_) => Err(status.as_u16().to_string()),
                    Err(e) => Err(format!("body: {}", short(&e))),
                }
            }
            Err(e) => Err(format!("send: {}", short(&e))),
        };
        let done = Instant::now();
        if sent < measure_from || done > stop_at {
            continue;
        }
        match outcome {
            Ok(text) => {
                seen.latencies_us.push((done - sent).as_micros() as u64);
                record_server_view(&mut seen, &text);
            }
            Err(why) => *seen.failures.entry(why).or_default() += 1,
        }
    }
}

fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    s.truncate(80);
    s
}

/// Keeps what the server said about its own time: `timings_ms` and `batch_size`.
fn record_server_view(seen: &mut Seen, text: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(text) else { return };
    if let Some(stages) = answer.get("timings_ms").and_then(|t| t.as_object()) {
        for (stage, ms) in stages {
            if let Some(ms) = ms.as_f64() {
                seen.stages.entry(stage.clone()).or_default().push(ms);
            }
        }
    }
    if let Some(rows) = answer.get("batch_size").and_then(|b| b.as_f64()) {
        seen.batch_sizes.push(rows);
        let inference = answer.pointer("/timings_ms/inference").and_then(|t| t.as_f64());
        if let Some(ms) = inference.filter(|_| rows >= 1.0) {
            seen.inference_per_row.push(ms / rows);
        }
    }
}

fn summarise(args: &RunArgs, body_bytes: usize, mut seen: Seen) -> Report {
    seen.latencies_us.sort_unstable();
    let ms: Vec<f64> = seen.latencies_us.iter().map(|&us| us as f64 / 1000.0).collect();
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let stages_ms = seen.stages.iter().map(|(k, v)| (k.clone(), mean(v))).collect();
    let stages_p50_ms = seen
        .stages
        .iter_mut()
        .map(|(k, v)| {
            v.sort_by(f64::total_cmp);
            (k.clone(), quantile(v, 0.5))
        })
        .collect();
    Report {
        url: args.url.clone(),
        content_type: args.content_type.clone(),
        body_bytes,
        concurrency: args.concurrency,
        duration_s: args.duration,
        requests: ms.len(),
        failures: seen.failures,
        requests_per_s: ms.len() as f64 / args.duration,
        latency_ms: Percentiles {
            mean: mean(&ms),
            p50: quantile(&ms, 0.50),
            p90: quantile(&ms, 0.90),
            p99: quantile(&ms, 0.99),
            max: ms.last().copied().unwrap_or(0.0),
        },
        stages_ms,
        stages_p50_ms,
        mean_batch_size: (!seen.batch_sizes.is_empty()).then(|| mean(&seen.batch_sizes)),
        inference_per_row_ms: (!seen.inference_per_row.is_empty()).then(|| mean(&seen.inference_per_row)),
    }
}

fn parse_header(spec: &str) -> Result<(String, String), String> {
    let (name, value) = spec.split_once(':').ok_or_else(|| format!("'{spec}' is not NAME:VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
