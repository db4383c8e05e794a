//! Watching directories for changes, as `--guest-dir` and the TLS files need it: a directory,
//! not a file, is watched, so that a file renamed over atomically or a Kubernetes `..data`
//! symlink flip (which replaces what a path points to without touching the path) is seen; and
//! the events of one change (a copy, a rename and a chmod; several files and a flip) arrive as
//! one.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedReceiver;

/// Events within this window are one change.
const SETTLE: Duration = Duration::from_millis(250);

/// The changes seen in the watched directories, a burst at a time.
pub struct Changes(UnboundedReceiver<()>);

impl Changes {
    /// Waits for the next change to settle; `None` once the watcher is gone.
    pub async fn settled(&mut self) -> Option<()> {
        self.0.recv().await?;
        tokio::time::sleep(SETTLE).await;
        while self.0.try_recv().is_ok() {}
        Some(())
    }
}

/// Watches `dirs` (not recursively) for as long as the returned watcher lives.
pub fn dirs(dirs: &[PathBuf]) -> notify::Result<(notify::RecommendedWatcher, Changes)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    for dir in dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, Changes(rx)))
}
