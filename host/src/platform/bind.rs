//! Listen addresses: `--bind` (repeatable), else `[::]:$PORT`, else `[::]:8000`; and sockets
//! bound so that `[::]` also accepts IPv4 clients.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

use super::Source;

/// The port used when neither `--bind` nor `PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 8000;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{flag} '{spec}' is not ADDR:PORT (e.g. [::]:8000, 0.0.0.0:8000, localhost:8000)")]
    Malformed { flag: &'static str, spec: String },
    #[error("{flag} '{addr}' does not resolve: {source}")]
    Unresolved { flag: &'static str, addr: String, source: std::io::Error },
    #[error("PORT='{0}' is not a port number (1-65535)")]
    BadPortEnv(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Resolves the listen addresses. `bind` holds the `--bind` values (from the flag or
/// `MOTION_HOST_BIND`, as `bind_source` says); `port_env` is `PORT`.
pub fn resolve(
    bind: &[String],
    bind_source: Source,
    port_env: Option<&str>,
) -> Result<(Vec<SocketAddr>, Source), BindError> {
    if !bind.is_empty() {
        return Ok((parse_all("--bind", bind)?, bind_source));
    }
    if let Some(port) = port_env.filter(|p| !p.trim().is_empty()) {
        let port: u16 =
            port.trim().parse().ok().filter(|&p| p != 0).ok_or_else(|| BindError::BadPortEnv(port.into()))?;
        return Ok((vec![SocketAddr::from(([0u16; 8], port))], Source::Env("PORT")));
    }
    Ok((vec![SocketAddr::from(([0u16; 8], DEFAULT_PORT))], Source::Default))
}

/// Parses the addresses of `flag`'s values (`--bind`, `--grpc-bind`), without duplicates.
pub fn parse_all(flag: &'static str, specs: &[String]) -> Result<Vec<SocketAddr>, BindError> {
    let mut addrs = Vec::new();
    for spec in specs {
        for addr in parse_for(flag, spec)? {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    Ok(addrs)
}

/// Parses one value: a socket address, or `HOST:PORT` resolved to every address of HOST.
fn parse_for(flag: &'static str, spec: &str) -> Result<Vec<SocketAddr>, BindError> {
    let spec = spec.trim();
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let malformed = || BindError::Malformed { flag, spec: spec.into() };
    let (host, port) = spec.rsplit_once(':').ok_or_else(malformed)?;
    if host.is_empty() || port.parse::<u16>().is_err() || host.contains(':') {
        return Err(malformed());
    }
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|source| BindError::Unresolved { flag, addr: spec.into(), source })?
        .collect();
    if addrs.is_empty() {
        let source = std::io::ErrorKind::NotFound.into();
        return Err(BindError::Unresolved { flag, addr: spec.into(), source });
    }
    Ok(addrs)
}

/// Opens a listening socket. An IPv6 wildcard is made dual-stack explicitly (IPV6_V6ONLY off),
/// whatever the system default, so IPv4 clients reach `[::]` too.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let open = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(!addr.ip().is_unspecified())?;
        }
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    open().map_err(|source| BindError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn addresses_follow_the_precedence() {
        let flag = Source::Flag("--bind");
        /// --bind values, PORT, expected addresses, expected source.
        type Case<'a> = (Vec<String>, Option<&'a str>, Vec<&'a str>, Source);
        let cases: Vec<Case> = vec![
            (v(&["[::]:30751"]), Some("9000"), vec!["[::]:30751"], flag.clone()),
            (v(&["0.0.0.0:1", "[::1]:2"]), None, vec!["0.0.0.0:1", "[::1]:2"], flag.clone()),
            (v(&["127.0.0.1:5", "127.0.0.1:5"]), None, vec!["127.0.0.1:5"], flag.clone()),
            (vec![], Some("9000"), vec!["[::]:9000"], Source::Env("PORT")),
            (vec![], Some(""), vec!["[::]:8000"], Source::Default),
            (vec![], None, vec!["[::]:8000"], Source::Default),
        ];
        for (bind, port, expected, source) in cases {
            let (addrs, got_source) = resolve(&bind, flag.clone(), port).unwrap();
            let expected: Vec<SocketAddr> = expected.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(addrs, expected, "{bind:?} PORT={port:?}");
            assert_eq!(got_source, source);
        }
    }

    #[test]
    fn host_names_resolve() {
        let addrs = parse_for("--bind", "localhost:8080").unwrap();
        assert!(addrs.iter().all(|a| a.port() == 8080 && a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn bad_values_are_named() {
        for bad in ["8000", ":::", "[::]", "localhost:port", "[::]:99999", ":80"] {
            let err = parse_for("--grpc-bind", bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.starts_with("--grpc-bind"), "{bad}: {err}");
        }
        let err = resolve(&[], Source::Default, Some("http")).unwrap_err().to_string();
        assert!(err.contains("PORT='http'"), "{err}");
    }
}
