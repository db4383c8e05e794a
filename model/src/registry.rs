//! Model manifests (`models/<name>/model.toml`) and the registry of loaded models.
//!
//! The registry is what `wasi:nn/graph.load-by-name` looks names up in. A manifest that is
//! malformed, names a missing file, or whose sha256 does not match the file stops start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::{BackendError, BatchObserver, DeviceChoice, Model, Tuning};

/// The manifest file in each model directory.
pub const MANIFEST: &str = "model.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub format: String,
    #[serde(default = "default_file")]
    pub file: String,
    pub sha256: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// What the model is, how it was made and evaluated: written for people, accepted (so that
    /// unknown fields can still be refused as typos) but not read by the host.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub provenance: Option<toml::Table>,
    #[serde(default)]
    #[allow(dead_code)]
    pub evaluation: Option<toml::Table>,
}

fn default_file() -> String {
    "model.pt".into()
}

/// A named tensor of the model's signature; `-1` marks the batch dimension.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model directory '{path}': {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("no model in '{0}': no subdirectory holds a model.toml")]
    Empty(String),
    #[error("cannot read '{path}': {reason}")]
    Manifest { path: String, reason: String },
    #[error("model file '{path}' has sha256 {actual}, but its manifest says {expected}")]
    Digest { path: String, expected: String, actual: String },
    #[error("two models are named '{0}'")]
    Duplicate(String),
    #[error("model '{name}' from '{path}': {source}")]
    Backend { name: String, path: String, source: BackendError },
}

impl Manifest {
    /// Reads and checks a manifest: the host serves single-input, single-output FP32
    /// TorchScript models with a leading batch dimension.
    pub fn read(path: &Path) -> Result<Manifest, ModelError> {
        let bad = |reason: String| ModelError::Manifest { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != "torchscript" {
            return Err(bad(format!("format '{}' is not supported (only 'torchscript')", manifest.format)));
        }
        for (what, specs) in [("inputs", &manifest.inputs), ("outputs", &manifest.outputs)] {
            let [spec] = specs.as_slice() else {
                return Err(bad(format!("{what} must name exactly one tensor, found {}", specs.len())));
            };
            if spec.dtype != "FP32" {
                return Err(bad(format!(
                    "{what} '{}' has dtype {}; only FP32 is supported",
                    spec.name, spec.dtype
                )));
            }
            if spec.shape.first() != Some(&-1) || spec.shape[1..].iter().any(|&d| d < 1) {
                return Err(bad(format!(
                    "{what} '{}' has shape {:?}; expected -1 (batch) then positive dimensions",
                    spec.name, spec.shape
                )));
            }
        }
        Ok(manifest)
    }

    pub fn input(&self) -> &TensorSpec {
        &self.inputs[0]
    }

    pub fn output(&self) -> &TensorSpec {
        &self.outputs[0]
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Every loaded model, by name.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Arc<Model>>,
}

impl ModelRegistry {
    /// Finds every `*/model.toml` under `dir`, checks it and its file, and loads each model
    /// onto its inference thread (warm-up included); `batches` hears of every forward pass.
    pub fn load_dir(
        dir: &Path,
        device: &DeviceChoice,
        tuning: Tuning,
        batches: BatchObserver,
    ) -> Result<ModelRegistry, ModelError> {
        let dir_err = |source| ModelError::Dir { path: dir.display().to_string(), source };
        let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(dir_err)?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path().join(MANIFEST))
            .filter(|path| path.is_file())
            .collect();
        manifests.sort();
        if manifests.is_empty() {
            return Err(ModelError::Empty(dir.display().to_string()));
        }
        let mut registry = ModelRegistry::default();
        for manifest_path in manifests {
            let manifest = Manifest::read(&manifest_path)?;
            let model_dir = manifest_path.parent().unwrap_or(dir);
            let file = model_dir.join(&manifest.file);
            let actual = sha256_file(&file).map_err(|e| ModelError::Manifest {
                path: file.display().to_string(),
                reason: e.to_string(),
            })?;
            if let Some(expected) = &manifest.sha256
                && !expected.eq_ignore_ascii_case(&actual)
            {
                return Err(ModelError::Digest {
                    path: file.display().to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
            if registry.models.contains_key(&manifest.name) {
                return Err(ModelError::Duplicate(manifest.name));
            }
            let name = manifest.name.clone();
            let model = Model::load(manifest, &file, actual, device, tuning, Arc::clone(&batches)).map_err(
                |source| ModelError::Backend { name: name.clone(), path: file.display().to_string(), source },
            )?;
            registry.models.insert(name, Arc::new(model));
        }
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &str) -> Result<Manifest, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        std::fs::write(&path, body).unwrap();
        Manifest::read(&path)
    }

    const GOOD: &str = r#"
name = "m"
version = "1"
format = "torchscript"
[[inputs]]
name = "input"
shape = [-1, 8, 112, 112]
dtype = "FP32"
[[outputs]]
name = "logits"
shape = [-1, 16]
dtype = "FP32"
"#;

    #[test]
    fn the_shipped_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/motion-resnet18/model.toml");
        let m = Manifest::read(&path).unwrap();
        assert_eq!(m.name, "motion-resnet18");
        assert_eq!(m.input().shape, vec![-1, 8, 112, 112]);
        assert_eq!(m.output().shape, vec![-1, 16]);
        let file = path.parent().unwrap().join(&m.file);
        assert_eq!(
            m.sha256.as_deref(),
            Some(sha256_file(&file).unwrap().as_str()),
            "model.pt changed without its manifest"
        );
    }

    #[test]
    fn manifests_are_checked() {
        assert!(manifest(GOOD).is_ok());
        let cases = [
            (GOOD.replace("torchscript", "onnx"), "format 'onnx'"),
            (GOOD.replace("dtype = \"FP32\"\n[[outputs]]", "dtype = \"U8\"\n[[outputs]]"), "dtype U8"),
            (GOOD.replace("[-1, 16]", "[16]"), "expected -1 (batch)"),
            (GOOD.replace("version = \"1\"", ""), "missing field `version`"),
            (format!("{GOOD}\nsurprise = 1"), "unknown field `surprise`"),
        ];
        for (body, expected) in cases {
            let err = manifest(&body).unwrap_err().to_string();
            assert!(err.contains(expected), "'{err}' lacks '{expected}'");
        }
    }
}
