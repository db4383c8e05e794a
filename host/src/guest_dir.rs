//! `--guest-dir`: every `NAME.wasm` in the directory is a guest named NAME. They load at start,
//! and the directory is watched: when a file appears or changes — written in place, renamed
//! over atomically, or flipped by the `..data` symlink swap that Kubernetes uses for mounted
//! volumes — the directory is rescanned and every file whose content differs from the live
//! version is validated and swapped in. A broken file leaves the running version in place and
//! is logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::service::{Origin, Service};

/// The guests in `dir`: name → file, for every `NAME.wasm` whose stem is a valid guest name.
pub fn scan(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("cannot read --guest-dir '{}'", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") || !path.is_file() {
            continue;
        }
        match motion_runtime::name_from_file(&path) {
            Ok(name) => {
                found.insert(name, path);
            }
            Err(reason) => tracing::warn!(path = %path.display(), "ignored in --guest-dir: {reason}"),
        }
    }
    Ok(found)
}

/// Loads every guest in the directory whose content differs from the live one; `Err` lists
/// the files that failed (their running versions stay).
pub async fn sync(service: &Service, dir: &Path) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (name, path) in scan(dir)? {
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let digest = motion_runtime::guest_digest(&bytes);
        let live = service.live_guests().and_then(|set| set.get(&name).map(|g| g.digest.clone()));
        if live.is_some_and(|live| live == digest) {
            continue;
        }
        if let Err(e) = service.install(&name, bytes, Origin::Dir(&path)).await {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    if failures.is_empty() { Ok(()) } else { anyhow::bail!("{}", failures.join("; ")) }
}

/// Watches `dir` for as long as the returned watcher lives, syncing after each burst of
/// changes.
pub fn watch(service: Arc<Service>, dir: PathBuf) -> anyhow::Result<notify::RecommendedWatcher> {
    let (watcher, mut changes) = crate::watch::dirs(std::slice::from_ref(&dir))
        .with_context(|| format!("cannot watch --guest-dir '{}'", dir.display()))?;
    tokio::spawn(async move {
        while changes.settled().await.is_some() {
            if let Err(e) = sync(&service, &dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "--guest-dir change not fully applied");
            }
        }
    });
    Ok(watcher)
}
