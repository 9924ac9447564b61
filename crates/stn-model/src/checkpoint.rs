//! Checkpoints: safetensors with the parameters under PyTorch's names (so `safetensors.torch.load_file`
//! gives a `state_dict` the seed's `Net` loads), the optimiser's buffers as `optim.m.<name>` and
//! `optim.v.<name>`, and in the metadata the model spec (and, for the seed family, the older
//! `arch`), the epoch, the optimiser and the run's options. Written atomically (temp file, fsync,
//! rename).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::{Arch, ModelSpec, Network, Optimizer, OptimizerKind, ParamError, Params};

/// The largest checkpoint read: the biggest network (a 1024×1024 canvas) with Adam's two buffers
/// is about 100 MB.
const MAX_BYTES: u64 = 1 << 30;

/// The most epochs a checkpoint may claim (far beyond any run; keeps `epoch + 1` from wrapping).
pub const MAX_EPOCHS: u64 = 1_000_000;

/// Format tag in the metadata, bumped on incompatible changes.
const FORMAT: &str = "stn-checkpoint-1";

/// Why a checkpoint could not be written or read; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The operating system's error while writing.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file could not be read (missing, not a regular file, too large); names the file.
    #[error(transparent)]
    Read(#[from] stn_data::ReadError),
    /// Not a checkpoint of this format (or a corrupt one).
    #[error("{path}: not a valid checkpoint: {what}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// Its tensors are not the network's parameters.
    #[error("{path}: {source}")]
    Params {
        /// The file.
        path: String,
        /// What is wrong with them.
        source: ParamError,
    },
}

/// Everything needed to resume training exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The network's parameters.
    pub params: Params,
    /// The optimiser and its state.
    pub optimizer: Optimizer,
    /// Completed epochs.
    pub epoch: u64,
    /// The run's options and history, as the trainer wrote them.
    pub run: serde_json::Value,
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        let p = &self.params;
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for ((name, shape), data) in p.names.iter().zip(&p.shapes).zip(&p.data) {
            owned.push((name.clone(), shape.clone(), bytes_of(data)));
        }
        for (prefix, bufs) in [
            ("optim.m.", &self.optimizer.m),
            ("optim.v.", &self.optimizer.v),
        ] {
            for ((name, shape), data) in p.names.iter().zip(&p.shapes).zip(bufs) {
                owned.push((format!("{prefix}{name}"), shape.clone(), bytes_of(data)));
            }
        }
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("sizes agree"),
                )
            })
            .collect();
        let o = &self.optimizer;
        let mut meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("spec", serde_json::to_string(p.net.spec()).expect("serialisable")),
            ("epoch", self.epoch.to_string()),
            ("optimizer", serde_json::json!({"kind": o.kind, "lr": o.lr, "loc_lr_scale": o.loc_lr_scale, "step": o.step}).to_string()),
            ("run", self.run.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(arch) = p.seed_arch() {
            // Read by builds from before specs.
            meta.insert(
                "arch".into(),
                serde_json::to_string(&arch).expect("serialisable"),
            );
        }
        safetensors::serialize(views, &Some(meta))
    }

    /// Writes the checkpoint atomically: a crash leaves the previous file whole.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes = self.to_bytes().map_err(|e| CheckpointError::Format {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CheckpointError::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        }
        stn_data::write_atomic(path, &bytes).map_err(|e| CheckpointError::Io {
            path: path.display().to_string(),
            source: e,
        })
    }

    /// Reads a checkpoint file (a regular file of at most 1 GiB).
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = stn_data::read_regular(path, MAX_BYTES)?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses checkpoint bytes; `path` names them in errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |what: String| CheckpointError::Format {
            path: path.to_string(),
            what,
        };
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("safetensors header: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata has no '{k}' (not written by stn-train?)")))
        };
        if get("format")? != FORMAT {
            return Err(bad(format!(
                "format '{}', expected '{FORMAT}'",
                get("format")?
            )));
        }
        // The spec; a checkpoint from before specs has the seed family's `arch` only.
        let net = match meta.get("spec") {
            Some(spec) => {
                let spec: ModelSpec =
                    serde_json::from_str(spec).map_err(|e| bad(format!("spec: {e}")))?;
                Network::new(spec).map_err(|e| bad(e.to_string()))?
            }
            None => {
                let arch: Arch =
                    serde_json::from_str(get("arch")?).map_err(|e| bad(format!("arch: {e}")))?;
                arch.check().map_err(&bad)?;
                Network::from(arch)
            }
        };
        let epoch: u64 = get("epoch")?
            .parse()
            .map_err(|e| bad(format!("epoch: {e}")))?;
        if epoch > MAX_EPOCHS {
            return Err(bad(format!("epoch {epoch}: more than {MAX_EPOCHS}")));
        }
        let opt: serde_json::Value =
            serde_json::from_str(get("optimizer")?).map_err(|e| bad(format!("optimizer: {e}")))?;
        let run: serde_json::Value =
            serde_json::from_str(get("run")?).map_err(|e| bad(format!("run: {e}")))?;
        let kind: OptimizerKind = serde_json::from_value(opt["kind"].clone())
            .map_err(|e| bad(format!("optimizer kind: {e}")))?;
        let num = |k: &str| {
            opt[k]
                .as_f64()
                .ok_or_else(|| bad(format!("optimizer {k} missing")))
        };

        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut params = Vec::new();
        let mut state: HashMap<String, Vec<f32>> = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if name.starts_with("optim.") {
                state.insert(name, data);
            } else {
                params.push((name, view.shape().to_vec(), data));
            }
        }
        let params = Params::from_named(net, params).map_err(|e| CheckpointError::Params {
            path: path.to_string(),
            source: e,
        })?;
        let (lr, loc_lr_scale) = (num("lr")? as f32, num("loc_lr_scale")? as f32);
        if !(lr.is_finite() && lr > 0.0 && loc_lr_scale.is_finite() && loc_lr_scale >= 0.0) {
            return Err(bad(format!(
                "optimizer lr {lr} / loc_lr_scale {loc_lr_scale}: not a usable recipe"
            )));
        }
        let mut optimizer = Optimizer::new(kind, lr, loc_lr_scale, &params);
        optimizer.step = num("step")? as u64;
        for (prefix, bufs) in [
            ("optim.m.", &mut optimizer.m),
            ("optim.v.", &mut optimizer.v),
        ] {
            for (i, buf) in bufs.iter_mut().enumerate() {
                let key = format!("{prefix}{}", params.names[i]);
                let v = state
                    .remove(&key)
                    .ok_or_else(|| bad(format!("optimizer state {key} is missing")))?;
                if v.len() != buf.len() {
                    return Err(bad(format!(
                        "optimizer state {key} has {} values, expected {}",
                        v.len(),
                        buf.len()
                    )));
                }
                *buf = v;
            }
        }
        Ok(Checkpoint {
            params,
            optimizer,
            epoch,
            run,
        })
    }
}
