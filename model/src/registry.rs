//! The registry of loaded models: what `wasi:nn/graph.load-by-name` looks names up in. A
//! manifest that is malformed, names a missing file, or whose sha256 does not match the file
//! stops start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{BatchObserver, DeviceChoice, Model, Tuning};
use crate::error::ModelError;
use crate::manifest::{MANIFEST, Manifest, sha256_file};
use crate::precision::cpu_flags;

/// Every loaded model, by name.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Arc<Model>>,
}

impl ModelRegistry {
    /// Finds every `*/model.toml` under `dir`, checks it and its file (and that it may run at
    /// `tuning.precision` on `device`), and loads each model onto its inference thread (warm-up
    /// included); `batches` hears of every forward pass.
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
        let precision = tuning.precision;
        let flags = cpu_flags();
        for manifest_path in manifests {
            let manifest = Manifest::read(&manifest_path)?;
            precision
                .check_accuracy(|p| manifest.recorded_top1(p))
                .and_then(|()| precision.check_on(device.device, &flags))
                .map_err(|reason| ModelError::Precision { name: manifest.name.clone(), precision, reason })?;
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
