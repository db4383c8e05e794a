//! `--guest-profiler`: whether the engine tells a profiler where each compiled guest function
//! lies, so a sampling profiler of the whole server (`perf record -p PID`) names guest code
//! instead of showing anonymous addresses.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use wasmtime::{Config, ProfilingStrategy};

/// What the engine tells profilers about the code it compiles for guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestProfiler {
    /// Nothing: guest code shows as anonymous addresses.
    #[default]
    Off,
    /// Every compiled function (and every one loaded from the compile cache) as a line of
    /// `/tmp/perf-PID.map`, the file `perf report` reads for code that has no ELF file. A
    /// function is named by the component's `name` section where it keeps one, and
    /// `wasm[MODULE]::function[INDEX]` otherwise.
    PerfMap,
}

impl GuestProfiler {
    pub const NAMES: [&str; 2] = ["off", "perfmap"];

    pub fn name(self) -> &'static str {
        match self {
            GuestProfiler::Off => "off",
            GuestProfiler::PerfMap => "perfmap",
        }
    }

    /// The file this process's profiler data goes to, if any: perf's own convention, so it
    /// stays after the server exits, for `perf report` to read then.
    pub fn file(self) -> Option<PathBuf> {
        match self {
            GuestProfiler::Off => None,
            GuestProfiler::PerfMap => Some(PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))),
        }
    }

    pub(crate) fn apply(self, config: &mut Config) {
        match self {
            GuestProfiler::Off => {}
            GuestProfiler::PerfMap => {
                config.profiler(ProfilingStrategy::PerfMap);
            }
        }
    }
}

impl fmt::Display for GuestProfiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GuestProfiler {
    type Err = String;

    fn from_str(s: &str) -> Result<GuestProfiler, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(GuestProfiler::Off),
            "perfmap" => Ok(GuestProfiler::PerfMap),
            other => {
                Err(format!("unknown guest profiler '{other}' (use {})", GuestProfiler::NAMES.join(" or ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused_by_name() {
        for profiler in [GuestProfiler::Off, GuestProfiler::PerfMap] {
            assert_eq!(profiler.name().parse::<GuestProfiler>(), Ok(profiler));
        }
        assert_eq!("PerfMap".parse::<GuestProfiler>(), Ok(GuestProfiler::PerfMap));
        let refused = "vtune".parse::<GuestProfiler>().unwrap_err();
        assert!(refused.contains("'vtune'") && refused.contains("perfmap"), "{refused}");
        assert_eq!(GuestProfiler::Off.file(), None);
    }
}
