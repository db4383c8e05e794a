//! Model manifests (`models/<name>/model.toml`): what a model takes and returns, checked
//! before it loads.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::precision::Precision;

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
    /// The version of the model contract's preprocessing the model was trained with, which a
    /// guest (or a client sending tensors) must follow: "1.0" resizes whole frames, "1.1" crops
    /// letterbox and pillarbox bars first. "1.0" when the manifest does not say.
    #[serde(default = "default_preprocessing")]
    pub preprocessing: String,
    /// What the model is, how it was made and evaluated: written for people, accepted (so that
    /// unknown fields can still be refused as typos) but not read by the host.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub provenance: Option<toml::Table>,
    /// Also read: `[evaluation.precision]`, the held-out top-1 at each precision, which
    /// `--precision` checks ([`Manifest::recorded_top1`]).
    #[serde(default)]
    pub evaluation: Option<toml::Table>,
}

fn default_file() -> String {
    "model.pt".into()
}

fn default_preprocessing() -> String {
    "1.0".into()
}

/// A named tensor of the model's signature; `-1` marks the batch dimension.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
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

    /// The held-out top-1 recorded for `precision` (`[evaluation.precision]`), if any.
    pub fn recorded_top1(&self, precision: Precision) -> Option<f64> {
        let table = self.evaluation.as_ref()?.get("precision")?.as_table()?;
        table.get(precision.name())?.as_float()
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
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
    fn recorded_accuracies_are_read_by_precision() {
        let m = manifest(&format!("{GOOD}\n[evaluation.precision]\nfp32 = 0.96\nbf16 = 0.9588\n")).unwrap();
        assert_eq!(m.recorded_top1(Precision::Fp32), Some(0.96));
        assert_eq!(m.recorded_top1(Precision::Bf16), Some(0.9588));
        assert_eq!(m.recorded_top1(Precision::Fp16), None);
        assert_eq!(manifest(GOOD).unwrap().recorded_top1(Precision::Fp32), None);
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
