//! Which certificate to serve, and loading it into rustls.
//!
//! First match wins: `--tls-cert`/`--tls-key`; `TLS_CERTFILE`/`TLS_KEYFILE`; `tls.crt` and
//! `tls.key` in the well-known directory (`--tls-dir`, `TLS_DIR`); else plain HTTP with a
//! warning. A certificate that is present but unusable stops start-up with a message naming
//! the file: there is never a silent fall-back to HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
