//! Which certificate to serve, and loading it into rustls.
//!
//! First match wins: `--tls-cert`/`--tls-key`; `TLS_CERTFILE`/`TLS_KEYFILE`; `tls.crt` and
//! `tls.key` in the well-known directory (`--tls-dir`, `TLS_DIR`); else plain HTTP with a
//! warning. A certificate that is present but unusable stops start-up with a message naming
//! the file: there is never a silent fall-back to HTTP.
//!
//! While serving, the files are watched ([`watch`]): when the pair changes — rewritten in place,
//! renamed over, or flipped by the `..data` symlink swap of a Kubernetes secret volume — new
//! handshakes use the new pair; connections already open keep theirs. A new pair that does not
//! load is logged and the last good one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Source;

/// What the server will speak, decided before any socket opens.
#[derive(Debug, Clone)]
pub enum TlsPlan {
    /// Plain HTTP: no certificate was configured or mounted.
    Plain,
    /// HTTPS with this certificate chain and key.
    Files { cert: PathBuf, key: PathBuf, source: Source },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{given} is set ({from}) but {missing} is not: give both or neither")]
    HalfPair { given: &'static str, missing: &'static str, from: Source },
    #[error("TLS directory {dir} holds '{present}' but not '{missing}'")]
    HalfMounted { dir: String, present: &'static str, missing: &'static str },
    #[error("cannot read certificate '{path}': {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key '{path}': {reason}")]
    Key { path: String, reason: String },
    #[error("private key '{key}' does not match certificate '{cert}': {reason}")]
    Mismatch { cert: String, key: String, reason: String },
}

/// Decides the TLS plan. `cert` and `key` are the flag-or-env values with their sources;
/// `dir` is the well-known directory.
pub fn resolve(
    cert: Option<(PathBuf, Source)>,
    key: Option<(PathBuf, Source)>,
    dir: &Path,
) -> Result<TlsPlan, TlsError> {
    match (cert, key) {
        (Some((cert, source)), Some((key, _))) => Ok(TlsPlan::Files { cert, key, source }),
        (Some((_, from)), None) => {
            Err(TlsError::HalfPair { given: "--tls-cert", missing: "--tls-key", from })
        }
        (None, Some((_, from))) => {
            Err(TlsError::HalfPair { given: "--tls-key", missing: "--tls-cert", from })
        }
        (None, None) => {
            let cert = dir.join("tls.crt");
            let key = dir.join("tls.key");
            match (cert.exists(), key.exists()) {
                (true, true) => {
                    Ok(TlsPlan::Files { cert, key, source: Source::WellKnown(dir.display().to_string()) })
                }
                (false, false) => Ok(TlsPlan::Plain),
                (true, false) => Err(TlsError::HalfMounted {
                    dir: dir.display().to_string(),
                    present: "tls.crt",
                    missing: "tls.key",
                }),
                (false, true) => Err(TlsError::HalfMounted {
                    dir: dir.display().to_string(),
                    present: "tls.key",
                    missing: "tls.crt",
                }),
            }
        }
    }
}

/// Loads a certificate chain and its key into a rustls server configuration: TLS 1.3 and 1.2
/// only, ALPN offering h2 and http/1.1.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert { path: cert.display().to_string(), reason };
    let key_err = |reason: String| TlsError::Key { path: key.display().to_string(), reason };

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(pem_reason(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(pem_reason(e)))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM 'CERTIFICATE' block in the file".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(pem_reason(e)))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The files are also re-read this often, in case a change produced no event (some network
/// and overlay filesystems send none).
const POLL: Duration = Duration::from_secs(30);

/// The bytes of the pair, hashed: a change of either file changes it.
fn pair_digest(cert: &Path, key: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(cert)?);
    hasher.update([0u8]);
    hasher.update(std::fs::read(key)?);
    Ok(hex::encode(hasher.finalize()))
}

/// Watches the certificate and key for as long as the returned watcher lives, and loads each
/// new pair into `config`, which every listener shares. The directories holding the files are
/// watched, not the files: a symlink flip replaces what the path points to without touching
/// the path itself.
pub fn watch(
    config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut dirs: Vec<PathBuf> =
        [&cert, &key].iter().map(|p| p.parent().unwrap_or(Path::new(".")).to_path_buf()).collect();
    dirs.dedup();
    let (watcher, mut changes) = crate::watch::dirs(&dirs)?;
    let mut last = pair_digest(&cert, &key).ok();
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                changed = changes.settled() => {
                    if changed.is_none() {
                        return;
                    }
                }
                _ = poll.tick() => {}
            }
            reload(&config, &cert, &key, &mut last);
        }
    });
    Ok(watcher)
}

/// Loads the pair into `config` if its bytes differ from `last`, the pair last loaded (or
/// last refused: a broken pair is reported once, not at every event).
fn reload(config: &RustlsConfig, cert: &Path, key: &Path, last: &mut Option<String>) {
    let digest = match pair_digest(cert, key) {
        Ok(digest) => digest,
        Err(e) => {
            tracing::warn!(cert = %cert.display(), key = %key.display(), error = %e, "TLS files unreadable; still serving the previous certificate");
            return;
        }
    };
    if last.as_deref() == Some(digest.as_str()) {
        return;
    }
    *last = Some(digest);
    match load(cert, key) {
        Ok(new) => {
            let fingerprint = leaf_fingerprint(cert).unwrap_or_default();
            config.reload_from_config(new);
            tracing::info!(cert = %cert.display(), sha256 = %fingerprint, "TLS certificate reloaded: new connections use it");
        }
        Err(e) => {
            tracing::warn!(error = %e, "new TLS certificate or key refused; still serving the previous certificate");
        }
    }
}

/// The sha256 of the leaf certificate's DER, as `openssl x509 -fingerprint -sha256` shows it
/// (without the colons).
pub fn leaf_fingerprint(cert: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let leaf = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    Some(hex::encode(Sha256::digest(leaf.as_ref())))
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM block of the expected kind in the file (is it PEM?)".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_win_over_the_well_known_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "x").unwrap();
        std::fs::write(dir.path().join("tls.key"), "x").unwrap();
        let given = Some((PathBuf::from("/c"), Source::Env("TLS_CERTFILE")));
        let key = Some((PathBuf::from("/k"), Source::Env("TLS_KEYFILE")));
        match resolve(given, key, dir.path()).unwrap() {
            TlsPlan::Files { cert, source, .. } => {
                assert_eq!(cert, PathBuf::from("/c"));
                assert_eq!(source, Source::Env("TLS_CERTFILE"));
            }
            other => panic!("{other:?}"),
        }
        match resolve(None, None, dir.path()).unwrap() {
            TlsPlan::Files { source: Source::WellKnown(_), cert, .. } => assert!(cert.ends_with("tls.crt")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_mounted_means_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(resolve(None, None, dir.path()).unwrap(), TlsPlan::Plain));
        assert!(matches!(resolve(None, None, Path::new("/nonexistent/tls")).unwrap(), TlsPlan::Plain));
    }

    #[test]
    fn half_a_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "x").unwrap();
        let err = resolve(None, None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("'tls.key'"), "{err}");
        let err = resolve(Some(("/c".into(), Source::Flag("--tls-cert"))), None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = load(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("c.pem"), "{err}");
        let err = load(&dir.path().join("missing.pem"), &key).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
