//! The admin API: install, list, roll back and remove guests while the server runs.
//!
//! Protected by a bearer token read from `--admin-token-file`, compared in constant time and
//! never logged; without a token configured every admin route answers 404. Over plain HTTP on
//! a non-loopback address it is refused unless `--allow-insecure-admin` is given. Every action is
//! an audit log line: action, guest, digest, client address, outcome.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::runtime::{GuestError, GuestSet, LoadedGuest, Runtime, SetError};

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
    pub loaded_at: String,
    pub validation_ms: f64,
    /// `compiled` now, or `cached` from the compiled-guest cache.
    pub code: &'static str,
}

impl VersionEntry {
    fn of(guest: &LoadedGuest) -> Self {
        VersionEntry {
            version: guest.info.version.clone(),
            digest: guest.digest.clone(),
            size: guest.size,
            loaded_at: humantime::format_rfc3339_millis(guest.loaded_at).to_string(),
            validation_ms: super::ms(guest.validation),
            code: guest.compiled.as_str(),
        }
    }
}

/// A guest name, its live version and history, as the admin API lists it.
#[derive(Serialize)]
pub struct GuestEntry {
    pub name: String,
    pub default: bool,
    #[serde(flatten)]
    pub live: VersionEntry,
    /// Earlier versions, newest first: what rollback returns to.
    pub history: Vec<VersionEntry>,
}

fn entry(set: &GuestSet, name: &str) -> Option<GuestEntry> {
    let slot = set.slots.get(name)?;
    Some(GuestEntry {
        name: name.to_string(),
        default: set.default.as_deref() == Some(name),
        live: VersionEntry::of(&slot.live),
        history: slot.previous.iter().rev().map(|g| VersionEntry::of(g)).collect(),
    })
}

/// The entry of `name` as it is live now (a concurrent removal makes it 404).
fn live_entry(runtime: &Runtime, name: &str) -> Result<GuestEntry, ApiError> {
    entry(&runtime.guests(), name).ok_or_else(|| ApiError::not_found(format!("no guest named '{name}'")))
}

#[derive(Serialize)]
struct Listing {
    default_guest: Option<String>,
    guests: Vec<GuestEntry>,
}

pub async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let runtime = app.ready_runtime()?;
    let set = runtime.guests();
    let guests = set.slots.keys().filter_map(|name| entry(&set, name)).collect();
    Ok(Json(Listing { default_guest: set.default.clone(), guests }).into_response())
}

pub async fn put(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Who may upload is checked first, so no one else can make the server buffer a body. The
    // other checks wait for the body, so that their refusal is not sent while the client is
    // still writing (see http::classify).
    authorize(&app, &headers)?;
    let upload = app.read_body(&headers, body, app.deadline(std::time::Instant::now())).await?;
    let runtime = app.ready_runtime()?;
    if let Err(reason) = crate::runtime::check_name(&name) {
        return Err(ApiError::bad_request(reason));
    }
    let guest = match runtime.load(&name, upload.bytes.into()).await {
        Ok(guest) => guest,
        Err(e) => {
            let outcome = e.to_string();
            audit("install", &name, None, peer, &format!("rejected: {outcome}"));
            if let GuestError::Rejected { reasons, .. } = &e {
                tracing::warn!(guest = %name, reasons = ?reasons, "guest rejected");
            }
            return Err(e.into());
        }
    };
    let digest = guest.digest.clone();
    let replaced = runtime.install(guest);
    audit("install", &name, Some(&digest), peer, if replaced { "replaced" } else { "installed" });
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    let mut response = (status, Json(live_entry(runtime, &name)?)).into_response();
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
    let runtime = app.ready_runtime()?;
    match runtime.rollback(&name) {
        Ok(live) => {
            audit("rollback", &name, Some(&live.digest), peer, "rolled back");
            Ok(Json(live_entry(runtime, &name)?).into_response())
        }
        Err(e) => {
            audit("rollback", &name, None, peer, &format!("refused: {e}"));
            Err(set_error(e))
        }
    }
}

pub async fn remove(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let runtime = app.ready_runtime()?;
    let digest = runtime.guests().get(&name).map(|g| g.digest.clone());
    match runtime.remove(&name) {
        Ok(()) => {
            audit("remove", &name, digest.as_deref(), peer, "removed");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => {
            audit("remove", &name, digest.as_deref(), peer, &format!("refused: {e}"));
            Err(set_error(e))
        }
    }
}

fn set_error(e: SetError) -> ApiError {
    match e {
        SetError::Unknown(_) => ApiError::not_found(e.to_string()),
        SetError::NoHistory(_) | SetError::IsDefault(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
    }
}
