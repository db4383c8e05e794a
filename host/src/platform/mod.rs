//! The platform contract: which addresses to bind, which certificate to serve, and the state
//! file that tells `motion-host healthcheck` where the server is. Everything here is decided
//! and checked before the first socket opens, and each decision remembers where it came from
//! so the start-up log can say so.

pub mod bind;
pub mod state;
pub mod tls;

use std::fmt;

/// Where a setting came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag, e.g. `--bind`.
    Flag(&'static str),
    /// An environment variable, e.g. `PORT`.
    Env(&'static str),
    /// A file at the platform's well-known path.
    WellKnown(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::WellKnown(path) => write!(f, "well-known path {path}"),
            Source::Default => f.write_str("default"),
        }
    }
}
