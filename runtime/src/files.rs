//! Writing a file so that a reader sees the old content or the new, never half of either: the
//! compiled-guest cache writes its artifacts so, and the binary its state file.

use std::path::Path;

/// Writes `bytes` beside `path` (a name unique to this process), then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
