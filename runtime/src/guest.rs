//! A guest as the runtime holds it once validated ([`LoadedGuest`]), what it says of itself
//! ([`GuestInfo`]), and how guests are named and identified.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{Compiled, sha256_hex};
use crate::world::Pre;
pub use crate::world::{GuestInfo, Media};
use motion_model::Model;

/// One compiled, validated guest version.
pub struct LoadedGuest {
    /// The name it is installed under.
    pub name: String,
    pub info: GuestInfo,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: usize,
    pub model: Arc<Model>,
    pub loaded_at: SystemTime,
    /// How long validation took: compiling, linking, `info()` and the samples.
    pub validation: Duration,
    /// The sample clips validation sent through it, one per accepted media type it has one of.
    pub samples: Vec<SampleRun>,
    /// The accepted media types the host has no sample of, so validation did not exercise.
    pub unsampled: Vec<String>,
    /// Whether the code was compiled now or loaded from the compiled-guest cache.
    pub compiled: Compiled,
    pub(crate) pre: Pre,
}

impl LoadedGuest {
    /// The version of the `motion:guest` world it exports: `motion:guest@0.2.0` or `@0.1.0`.
    pub fn world(&self) -> &'static str {
        self.pre.world()
    }

    /// Whether it can answer with a timeline (`motion:guest@0.2.0`).
    pub fn segments(&self) -> bool {
        matches!(self.pre, Pre::V0_2(_))
    }

    /// Whether the guest says it reads this media type (parameters ignored).
    pub fn accepts(&self, content_type: &str) -> bool {
        let essence = motion_request::essence(content_type);
        self.info.accepts.iter().any(|a| a.eq_ignore_ascii_case(&essence))
    }
}

/// A guest's digest as the API reports it: `sha256:<hex>` of the component bytes.
pub fn guest_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Checks a guest name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.' or '-' (a name beginning with '-' reads as a flag on command lines).
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "guest name '{name:.80}' must be 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        ))
    }
}

/// The guest name a file gives: its stem, when that is a valid name.
pub fn name_from_file(path: &Path) -> Result<String, String> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    check_name(stem).map(|()| stem.to_string())
}

/// One sample clip that validation sent through a guest, and how long the guest took with it.
#[derive(Debug, Clone)]
pub struct SampleRun {
    pub media_type: String,
    pub bytes: usize,
    pub parts: usize,
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    pub took: Duration,
}

impl SampleRun {
    /// "the multipart/form-data sample (4 frames of 1280×720, 11063192 bytes in 4 parts)".
    pub fn describe(&self) -> String {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        format!(
            "the {} sample ({} frame{} of {}×{}, {} bytes in {} part{})",
            self.media_type,
            self.frames,
            plural(self.frames),
            self.width,
            self.height,
            self.bytes,
            self.parts,
            plural(self.parts)
        )
    }
}
