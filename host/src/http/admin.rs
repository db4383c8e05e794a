//! The admin API: install, list, roll back and remove guests while the server runs, and run a
//! new version as a canary beside the live one (`?canary=PERCENT`), then promote or roll it
//! back.
//!
//! Protected by a bearer token read from `--admin-token-file`, compared in constant time and
//! never logged; without a token configured every admin route answers 404. Over plain HTTP on
//! a non-loopback address it is refused unless `--allow-insecure-admin` is given. Every action is
//! an audit log line: action, guest, digest, client address, outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::service::{Origin, Service, ServiceError};
use motion_runtime::{Canary, GuestSet, LoadedGuest, RolledBack, Tally};

/// The admin bearer token. Its `Debug` never shows it.
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

impl AdminToken {
    /// Reads the token file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn read(path: &Path) -> anyhow::Result<AdminToken> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read --admin-token-file '{}': {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 {
            anyhow::bail!("--admin-token-file '{}' holds a token shorter than 16 characters", path.display());
        }
        Ok(AdminToken(token.as_bytes().to_vec()))
    }

    fn matches(&self, offered: &[u8]) -> bool {
        self.0.ct_eq(offered).into()
    }
}

/// Checks who may use the admin API, in the order a client needs to hear it.
fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.settings.admin else {
        return Err(super::route_not_found());
    };
    if app.settings.admin_exposed_in_plain_text && !app.settings.allow_insecure_admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API is refused over plain HTTP on a non-loopback address: serve TLS, bind \
             loopback only, or pass --allow-insecure-admin",
        ));
    }
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match offered {
        None => {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs 'Authorization: Bearer <token>'",
            );
            e.www_authenticate = true;
            Err(e)
        }
        Some(offered) if token.matches(offered.trim().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin token is wrong")),
    }
}

fn audit(action: &str, guest: &str, digest: Option<&str>, peer: SocketAddr, outcome: &str) {
    tracing::info!(
        target: "audit",
        action,
        guest,
        digest = digest.unwrap_or("-"),
        client = %peer,
        outcome,
        "admin {action} {guest}: {outcome}"
    );
}

/// One guest version, as the admin API lists it.
#[derive(Serialize)]
pub struct VersionEntry {
    pub version: String,
    pub digest: String,
    pub size: usize,
    /// The `motion:guest` world it exports.
    pub world: &'static str,
    pub loaded_at: String,
    pub validation_ms: f64,
    /// `compiled` now, or `cached` from the compiled-guest cache.
    pub code: &'static str,
    /// The sample clips validation sent through it.
    pub samples: Vec<SampleEntry>,
    /// Media types it accepts that the host has no sample of, so validation did not send them.
    pub unsampled: Vec<String>,
}

/// One sample clip validation sent through a guest version.
#[derive(Serialize)]
pub struct SampleEntry {
    pub media_type: String,
    pub bytes: usize,
    pub frames: usize,
    /// Its classification, from instantiation to the answer.
    pub ms: f64,
}

impl VersionEntry {
    fn of(guest: &LoadedGuest) -> Self {
        VersionEntry {
            version: guest.info.version.clone(),
            digest: guest.digest.clone(),
            size: guest.size,
            world: guest.world(),
            loaded_at: humantime::format_rfc3339_millis(guest.loaded_at).to_string(),
            validation_ms: super::ms(guest.validation),
            code: guest.compiled.as_str(),
            samples: guest
                .samples
                .iter()
                .map(|run| SampleEntry {
                    media_type: run.media_type.clone(),
                    bytes: run.bytes,
                    frames: run.frames,
                    ms: super::ms(run.took),
                })
                .collect(),
            unsampled: guest.unsampled.clone(),
        }
    }
}

/// A guest name, its live version, its canary and its history, as the admin API lists it.
#[derive(Serialize)]
pub struct GuestEntry {
    pub name: String,
    pub default: bool,
    #[serde(flatten)]
    pub live: VersionEntry,
    /// The version taking a share of the traffic beside the live one, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryEntry>,
    /// Earlier versions, newest first: what rollback returns to.
    pub history: Vec<VersionEntry>,
}

/// A canary: its version, its share, and how it and the live version have done since it began.
#[derive(Serialize)]
pub struct CanaryEntry {
    #[serde(flatten)]
    pub version: VersionEntry,
    pub percent: u8,
    pub trial: TrialEntry,
}

#[derive(Serialize)]
pub struct TrialEntry {
    pub canary: TallyEntry,
    pub live: TallyEntry,
}

/// Requests answered, and those the guest failed (guest_fault, guest_timeout).
#[derive(Serialize)]
pub struct TallyEntry {
    pub requests: u64,
    pub failures: u64,
    pub failure_rate: f64,
}

impl TallyEntry {
    fn of(tally: &Tally) -> Self {
        TallyEntry {
            requests: tally.requests(),
            failures: tally.failures(),
            failure_rate: tally.failure_rate(),
        }
    }
}

impl CanaryEntry {
    fn of(canary: &Canary) -> Self {
        CanaryEntry {
            version: VersionEntry::of(&canary.guest),
            percent: canary.percent,
            trial: TrialEntry {
                canary: TallyEntry::of(&canary.trial.canary),
                live: TallyEntry::of(&canary.trial.live),
            },
        }
    }
}

fn entry(set: &GuestSet, name: &str) -> Option<GuestEntry> {
    let live = set.get(name)?;
    Some(GuestEntry {
        name: name.to_string(),
        default: set.is_default(name),
        live: VersionEntry::of(live),
        canary: set.canary(name).map(CanaryEntry::of),
        history: set.history(name).map(|g| VersionEntry::of(g)).collect(),
    })
}

/// The entry of `name` as it is live now (a concurrent removal makes it 404).
fn live_entry(service: &Service, name: &str) -> Result<GuestEntry, ApiError> {
    entry(&*service.guests()?, name).ok_or_else(|| ApiError::not_found(format!("no guest named '{name}'")))
}

#[derive(Serialize)]
struct Listing {
    default_guest: Option<String>,
    guests: Vec<GuestEntry>,
}

pub async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let set = app.service.guests()?;
    let guests = set.names().into_iter().filter_map(|name| entry(&set, name)).collect();
    Ok(Json(Listing { default_guest: set.default_name().map(str::to_string), guests }).into_response())
}

/// `?canary=PERCENT`: a whole percent from 1 to 99, if given.
fn canary_share(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Option<u8>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let Some(value) = params.get("canary") else { return Ok(None) };
    match value.parse::<u8>() {
        Ok(percent) if (1..=99).contains(&percent) => Ok(Some(percent)),
        _ => Err(ApiError::bad_request(format!(
            "canary '{value:.16}' is not a whole percent from 1 to 99 (the canary's share of the guest's traffic)"
        ))),
    }
}

pub async fn put(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Who may upload is checked first, so no one else can make the server buffer a body. The
    // other checks wait for the body, so that their refusal is not sent while the client is
    // still writing (see http::v1::classify).
    authorize(&app, &headers)?;
    let upload = app.read_body(&headers, body, &app.deadline(std::time::Instant::now())).await?;
    motion_runtime::check_name(&name).map_err(ApiError::bad_request)?;
    if let Some(percent) = canary_share(query)? {
        return match app.service.install_canary(&name, upload.bytes.into(), percent).await {
            Ok(canary) => {
                audit("canary", &name, Some(&canary.digest), peer, &format!("canary on {percent}%"));
                Ok(Json(live_entry(&app.service, &name)?).into_response())
            }
            Err(e) => {
                audit("canary", &name, None, peer, &format!("refused: {e}"));
                Err(e.into())
            }
        };
    }
    let installed = match app.service.install(&name, upload.bytes.into(), Origin::Admin).await {
        Ok(installed) => installed,
        Err(e) => {
            if let ServiceError::Guest(e) = &e {
                audit("install", &name, None, peer, &format!("rejected: {e}"));
            }
            return Err(e.into());
        }
    };
    let replaced = installed.replaced;
    audit(
        "install",
        &name,
        Some(&installed.guest.digest),
        peer,
        if replaced { "replaced" } else { "installed" },
    );
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    let mut response = (status, Json(live_entry(&app.service, &name)?)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/guests/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn rollback(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let done = app.service.rollback(&name).map(|done| match done {
        RolledBack::Canary(canary) => (canary, "canary removed"),
        RolledBack::Previous(live) => (live, "rolled back"),
    });
    answer_change(&app, "rollback", &name, peer, done)
}

/// Answers a change to guest `name` that the service made (or refused): an audit line with the
/// version it concerned and the outcome, then the guest's entry as it is now. A server not yet
/// ready refuses without one.
fn answer_change(
    app: &AppState,
    action: &str,
    name: &str,
    peer: SocketAddr,
    done: Result<(Arc<LoadedGuest>, &str), ServiceError>,
) -> Result<Response, ApiError> {
    match done {
        Ok((guest, outcome)) => {
            audit(action, name, Some(&guest.digest), peer, outcome);
            Ok(Json(live_entry(&app.service, name)?).into_response())
        }
        Err(e @ ServiceError::NotReady(_)) => Err(e.into()),
        Err(e) => {
            audit(action, name, None, peer, &format!("refused: {e}"));
            Err(e.into())
        }
    }
}

/// `POST /admin/guests/{name}/promote`: the canary becomes the live version.
pub async fn promote(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let done = app.service.promote(&name).map(|live| (live, "promoted"));
    answer_change(&app, "promote", &name, peer, done)
}

pub async fn remove(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    match app.service.remove(&name) {
        Ok(removed) => {
            audit("remove", &name, Some(&removed.digest), peer, "removed");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e @ ServiceError::NotReady(_)) => Err(e.into()),
        Err(e) => {
            let digest = app.service.guests().ok().and_then(|set| set.get(&name).map(|g| g.digest.clone()));
            audit("remove", &name, digest.as_deref(), peer, &format!("refused: {e}"));
            Err(e.into())
        }
    }
}
