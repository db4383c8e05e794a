//! The state file: where a running server records its addresses and scheme, so that
//! `motion-host healthcheck` finds it whatever `--bind` the platform passed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServeState {
    pub pid: u32,
    /// `http` or `https`.
    pub scheme: String,
    /// Every bound address, as the sockets report them.
    pub addresses: Vec<SocketAddr>,
    /// The health URL a local probe should use.
    pub health_url: String,
    /// The certificate served, when TLS is on.
    pub tls_cert: Option<PathBuf>,
}

impl ServeState {
    pub fn new(scheme: &str, addresses: Vec<SocketAddr>, tls_cert: Option<PathBuf>) -> Self {
        let probe = addresses
            .first()
            .map(|a| local_probe_addr(*a))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
        ServeState {
            pid: std::process::id(),
            scheme: scheme.into(),
            health_url: format!("{scheme}://{probe}/health"),
            addresses,
            tls_cert,
        }
    }

    /// Writes the file atomically (write beside it, then rename), creating its directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        motion_runtime::files::write_atomically(
            path,
            &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// The address a probe on this machine dials to reach a listener: wildcards become loopback.
pub fn local_probe_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // `[::]` is dual-stack here, and IPv4 loopback works even where IPv6 is disabled.
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip == Ipv6Addr::LOCALHOST => IpAddr::V6(ip),
        other => other,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(local_probe_addr("[::]:30751".parse().unwrap()), "127.0.0.1:30751".parse().unwrap());
        assert_eq!(local_probe_addr("0.0.0.0:1".parse().unwrap()), "127.0.0.1:1".parse().unwrap());
        assert_eq!(local_probe_addr("[::1]:2".parse().unwrap()), "[::1]:2".parse().unwrap());
        assert_eq!(local_probe_addr("10.1.2.3:4".parse().unwrap()), "10.1.2.3:4".parse().unwrap());
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/serve.json");
        let state =
            ServeState::new("https", vec!["[::]:30751".parse().unwrap()], Some("/etc/tls.crt".into()));
        assert_eq!(state.health_url, "https://127.0.0.1:30751/health");
        state.write(&path).unwrap();
        assert_eq!(ServeState::read(&path).unwrap(), state);
    }
}
