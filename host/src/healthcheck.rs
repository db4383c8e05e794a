//! `motion-host healthcheck`: the container's health probe. It reaches the server directly —
//! never through `HTTP(S)_PROXY` — accepts the server's own certificate whatever names it
//! carries (as `curl -k` would, for this local probe only), and says in one line why it failed.

use std::error::Error as _;

use crate::cli::HealthcheckArgs;
use crate::platform::state::ServeState;

/// Probes the server; returns the process exit code (0 healthy, 1 not).
pub async fn run(args: &HealthcheckArgs) -> std::process::ExitCode {
    match probe(args).await {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(line) => {
            println!("unhealthy: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn probe(args: &HealthcheckArgs) -> Result<String, String> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let state = ServeState::read(&args.state_file).map_err(|e| {
                format!(
                    "cannot read the server's state file '{}': {e} (is the server running? pass --url)",
                    args.state_file.display()
                )
            })?;
            state.health_url
        }
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(args.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client.get(&url).send().await.map_err(|e| format!("{url}: {}", why(&e, args)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("{url}: reading the body: {}", why(&e, args)))?;
    let healthy = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("healthy"));
    if status.is_success() && healthy {
        Ok(format!("healthy: {url}"))
    } else {
        let body: String = body.chars().take(300).collect();
        Err(format!("{url} answered {status}: {}", body.trim()))
    }
}

/// Names the failure: refused, TLS, timeout, or the underlying error.
fn why(e: &reqwest::Error, args: &HealthcheckArgs) -> String {
    if e.is_timeout() {
        return format!("timeout: no answer within {} ms", args.timeout.as_millis());
    }
    let mut chain = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return "connection refused: nothing listens there".into();
        }
        if s.downcast_ref::<rustls::Error>().is_some() {
            return format!("TLS handshake failed: {s}");
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let detail = chain.last().cloned().unwrap_or_else(|| e.to_string());
    if e.is_connect() { format!("cannot connect: {detail}") } else { format!("request failed: {detail}") }
}
