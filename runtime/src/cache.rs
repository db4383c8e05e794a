//! The compiled-guest cache: compiled components on disk, keyed by the component's sha256 and
//! the engine's compatibility hash, so a restart or a swap back to a known version skips
//! compilation.
//!
//! Loading precompiled code is unsafe in wasmtime (the bytes become executable code), so the
//! cache trusts only what it wrote: beside every artifact it records the artifact's own sha256,
//! and an artifact is loaded only when its bytes, read once into memory, match that record.
//! Anything else is ignored and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled guests are kept for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now (and written to the cache when there is one).
    Fresh,
    /// Loaded from the cache.
    Cached,
}

impl Compiled {
    pub fn as_str(self) -> &'static str {
        match self {
            Compiled::Fresh => "compiled",
            Compiled::Cached => "cached",
        }
    }
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        // The compatibility hash covers the wasmtime version and every setting that changes the
        // compiled code; any change gives new keys and so ignores old artifacts.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompileCache { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    fn paths(&self, digest_hex: &str) -> (PathBuf, PathBuf) {
        let artifact = self.dir.join(format!("{digest_hex}-{}.cwasm", self.engine_key));
        let record = artifact.with_extension("cwasm.sha256");
        (artifact, record)
    }

    /// A cached component for these component bytes, if a trusted artifact exists.
    fn load(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        let (artifact, record) = self.paths(digest_hex);
        let expected = std::fs::read_to_string(&record).ok()?;
        let bytes = std::fs::read(&artifact).ok()?;
        if sha256_hex(&bytes) != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "compiled guest does not match its recorded digest; ignored and rebuilt");
            return None;
        }
        // SAFETY: these bytes are exactly what this cache serialised from a component compiled by
        // an engine with the same compatibility hash: their sha256 matches the record written
        // beside them, and they are deserialised from the buffer that was checked.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), error = %e, "compiled guest unusable; rebuilt");
                None
            }
        }
    }

    /// Writes a compiled component and then its digest record, each atomically.
    fn store(&self, digest_hex: &str, component: &Component) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::create_dir_all(&self.dir)?;
        let (artifact, record) = self.paths(digest_hex);
        crate::files::write_atomically(&artifact, &bytes)?;
        crate::files::write_atomically(&record, sha256_hex(&bytes).as_bytes())
    }
}

/// Compiles `bytes` (whose sha256 is `digest_hex`), through the cache when there is one.
/// Blocking: call it off the async workers.
pub fn compile(
    engine: &Engine,
    cache: Option<&CompileCache>,
    digest_hex: &str,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Compiled)> {
    if let Some(component) = cache.and_then(|c| c.load(engine, digest_hex)) {
        return Ok((component, Compiled::Cached));
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Some(cache) = cache
        && let Err(e) = cache.store(digest_hex, &component)
    {
        tracing::warn!(dir = %cache.dir.display(), error = %e, "cannot write the compiled-guest cache");
    }
    Ok((component, Compiled::Fresh))
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
