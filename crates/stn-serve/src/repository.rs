//! Which models a server serves: one ONNX file, or a Triton-layout model repository
//! (`DIR/<name>/config.pbtxt`, `DIR/<name>/<version>/model.onnx`), every version of every model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::IntCounter;
use stn_runtime::RunnerOptions;

use crate::batcher::{BatchOptions, Batcher};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::ModelInfo;
use crate::ServeError;

/// The file a model version is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// The name requests use.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The ONNX file.
    pub path: PathBuf,
}

/// Largest ONNX file a server reads (the seed network's is 0.2 MB).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// Whether `name` can be a model's name in a URL path and a directory name: letters, digits,
/// `_`, `-` and `.`, not starting with `.`.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The models of the Triton-layout repository `dir`, sorted by name and version; an error names
/// the directory that is not a model.
pub fn scan_repository(dir: &Path) -> Result<Vec<ModelSource>, ServeError> {
    let err = |what: String| ServeError::Repository {
        path: dir.display().to_string(),
        what,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    let mut models = Vec::new();
    for e in entries {
        let e = e.map_err(|e| err(e.to_string()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_dir() {
            continue; // Triton ignores files beside the model directories too.
        }
        if !valid_model_name(&name) {
            return Err(err(format!(
                "{name}: not a model name (letters, digits, '_', '-', '.')"
            )));
        }
        let model_dir = e.path();
        let mut versions = Vec::new();
        for v in std::fs::read_dir(&model_dir).map_err(|e| err(format!("{name}: {e}")))? {
            let v = v.map_err(|e| err(format!("{name}: {e}")))?;
            let vname = v.file_name().to_string_lossy().into_owned();
            let Ok(version) = vname.parse::<u64>() else {
                continue; // config.pbtxt, labels, …
            };
            if vname != version.to_string() || !v.path().is_dir() {
                continue;
            }
            let file = v.path().join("model.onnx");
            if file.is_file() {
                versions.push(ModelSource {
                    name: name.clone(),
                    version,
                    path: file,
                });
            } else {
                return Err(err(format!(
                    "{name}/{vname}: no model.onnx in this version directory"
                )));
            }
        }
        if versions.is_empty() {
            return Err(err(format!(
                "{name}: no version directory with a model.onnx ({name}/1/model.onnx)"
            )));
        }
        models.extend(versions);
    }
    if models.is_empty() {
        return Err(err(
            "no model directories (<name>/<version>/model.onnx); stn-export --triton-repo writes one".into(),
        ));
    }
    models.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    Ok(models)
}

/// A loaded model version and its queue.
pub struct Served {
    /// Its tensors.
    pub info: ModelInfo,
    /// Its worker.
    pub batcher: Batcher,
    /// Its counters, resolved once (no label lookups or label strings per request).
    pub counters: ModelCounters,
}

/// One model version's request and image counters.
pub struct ModelCounters {
    /// Inference requests answered 200.
    pub success: IntCounter,
    /// Inference requests that failed.
    pub failure: IntCounter,
    /// Images inferred.
    pub images: IntCounter,
}

impl ModelCounters {
    fn of(metrics: &Metrics, name: &str, version: u64) -> ModelCounters {
        let version = version.to_string();
        let requests = |outcome| {
            metrics
                .requests
                .with_label_values(&[name, &version, outcome])
        };
        ModelCounters {
            success: requests("success"),
            failure: requests("failure"),
            images: metrics.images.with_label_values(&[name, &version]),
        }
    }
}

/// Every model a server answers for.
pub struct ModelSet {
    models: BTreeMap<String, BTreeMap<u64, Arc<Served>>>,
}

impl ModelSet {
    /// Loads each source on its own worker; the first that fails stops the load, named.
    pub fn load(
        sources: &[ModelSource],
        runner: &RunnerOptions,
        batch: BatchOptions,
        metrics: &Metrics,
    ) -> Result<ModelSet, ServeError> {
        let mut models: BTreeMap<String, BTreeMap<u64, Arc<Served>>> = BTreeMap::new();
        for s in sources {
            let path = s.path.display().to_string();
            let load_err = |what: String| ServeError::Model {
                path: path.clone(),
                what,
            };
            if !valid_model_name(&s.name) {
                return Err(load_err(format!(
                    "--name {}: not a model name (letters, digits, '_', '-', '.')",
                    s.name
                )));
            }
            let size = std::fs::metadata(&s.path)
                .map_err(|e| load_err(e.to_string()))?
                .len();
            if size > MAX_MODEL_BYTES {
                return Err(load_err(format!(
                    "{size} bytes: larger than {MAX_MODEL_BYTES}, not an stn model"
                )));
            }
            let bytes = std::fs::read(&s.path).map_err(|e| load_err(e.to_string()))?;
            let loaded =
                stn_onnx::read_model(&bytes, &path).map_err(|e| load_err(e.to_string()))?;
            let info = ModelInfo::of(&s.name, s.version, &s.path, &loaded);
            let batcher = Batcher::start(&info, bytes, runner, batch, metrics).map_err(load_err)?;
            let versions = models.entry(s.name.clone()).or_default();
            if versions.contains_key(&s.version) {
                return Err(load_err(format!(
                    "model '{}' version {} is given twice",
                    s.name, s.version
                )));
            }
            let counters = ModelCounters::of(metrics, &s.name, s.version);
            versions.insert(
                s.version,
                Arc::new(Served {
                    info,
                    batcher,
                    counters,
                }),
            );
        }
        Ok(ModelSet { models })
    }

    /// The model `name` at `version`, or its latest version; 404 naming what is unknown.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Served>, ApiError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown model '{name}'")))?;
        match version {
            None => Ok(versions
                .values()
                .next_back()
                .expect("a model has a version")),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .ok_or_else(|| ApiError::not_found(format!("model '{name}' has no version '{v}'"))),
        }
    }

    /// Every version of model `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every model version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Served>> {
        self.models.values().flat_map(|v| v.values())
    }
}
