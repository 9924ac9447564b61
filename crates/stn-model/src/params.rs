//! The network's parameters under PyTorch's `state_dict` names and layouts.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Network;

/// Named tensors that are not a network's parameters.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// A parameter of the wrong shape.
    #[error("parameter {name}: shape {got:?}, expected {want:?} for {arch}")]
    Shape {
        /// Its name.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// The architecture's.
        want: Vec<usize>,
        /// The architecture, in words.
        arch: String,
    },
    /// A parameter the architecture has and the tensors lack.
    #[error("parameter {name} is missing (expected for {arch})")]
    Missing {
        /// Its name.
        name: String,
        /// The architecture, in words.
        arch: String,
    },
    /// A tensor the architecture has no parameter for.
    #[error("unexpected parameter {name} (not part of {arch})")]
    Unexpected {
        /// Its name.
        name: String,
        /// The architecture, in words.
        arch: String,
    },
    /// An architecture the layers do not fit ([`crate::Arch::check`], [`crate::ModelSpec::plan`]).
    #[error("{0}")]
    Arch(String),
}

/// All parameters of one network, in `state_dict` order, as host f32 buffers: the master copy the
/// optimiser updates and checkpoints store.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The network they belong to.
    pub net: Network,
    /// PyTorch's names, in `state_dict` order.
    pub names: Vec<String>,
    /// PyTorch's shapes (conv OIHW, linear `[out, in]`).
    pub shapes: Vec<Vec<usize>>,
    /// The values, C order.
    pub data: Vec<Vec<f32>>,
}

impl Params {
    /// PyTorch's default initialisation (`kaiming_uniform_(a=√5)` for weights and
    /// `U(−1/√fan_in, 1/√fan_in)` for biases, which are the same bound), from a seeded ChaCha8;
    /// the transform head's regressor (`fc_loc.2` in the seed) starts as the identity transform,
    /// as in the tutorial.
    pub fn init(net: impl Into<Network>, seed: u64) -> Params {
        let net = net.into();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5354_4e5f_494e_4954);
        let plan = net.plan();
        let specs = &plan.params;
        let (reg_w, reg_b) = plan.regressor.clone().unzip();
        let identity = plan.transform.identity();
        let mut data = Vec::with_capacity(specs.len());
        let mut fan_in = 1;
        for (name, shape) in specs {
            let n: usize = shape.iter().product();
            if name.ends_with(".weight") {
                fan_in = shape[1..].iter().product();
            }
            let v: Vec<f32> = if Some(name) == reg_w.as_ref() {
                vec![0.0; n]
            } else if Some(name) == reg_b.as_ref() {
                identity.clone()
            } else {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..n)
                    .map(|_| rng.gen_range(-bound..bound) as f32)
                    .collect()
            };
            data.push(v);
        }
        Params {
            names: specs.iter().map(|(n, _)| n.to_string()).collect(),
            shapes: specs.iter().map(|(_, s)| s.clone()).collect(),
            data,
            net,
        }
    }

    /// Builds from named tensors (any order), checking that the names and shapes are exactly those
    /// of `net`.
    pub fn from_named(
        net: impl Into<Network>,
        mut named: Vec<(String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Params, ParamError> {
        let net = net.into();
        if let Some(arch) = net.seed_arch() {
            arch.check().map_err(ParamError::Arch)?;
        }
        let specs = net.plan().params.clone();
        let desc = net.to_string();
        if let Some((name, _, _)) = named
            .iter()
            .find(|(n, _, _)| !specs.iter().any(|(s, _)| s == n))
        {
            return Err(ParamError::Unexpected {
                name: name.clone(),
                arch: desc,
            });
        }
        let mut p = Params {
            net,
            names: vec![],
            shapes: vec![],
            data: vec![],
        };
        for (name, want) in specs {
            let i = named
                .iter()
                .position(|(n, _, _)| *n == name)
                .ok_or_else(|| ParamError::Missing {
                    name: name.clone(),
                    arch: desc.clone(),
                })?;
            let (n, shape, data) = named.swap_remove(i);
            if shape != want
                || Some(data.len()) != want.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
            {
                return Err(ParamError::Shape {
                    name: n,
                    got: shape,
                    want,
                    arch: desc,
                });
            }
            p.names.push(n);
            p.shapes.push(shape);
            p.data.push(data);
        }
        Ok(p)
    }

    /// The names of the parameters holding NaN or infinite values (a network that runs, but
    /// computes garbage).
    pub fn non_finite(&self) -> Vec<&str> {
        self.names
            .iter()
            .zip(&self.data)
            .filter(|(_, d)| d.iter().any(|v| !v.is_finite()))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The values of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.data[i].as_slice())
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.data.iter().map(|d| d.len()).sum()
    }

    /// The seed-family architecture of the network, if it is one.
    pub fn seed_arch(&self) -> Option<crate::Arch> {
        self.net.seed_arch()
    }

    /// Whether a parameter belongs to the localisation head (`localization.*`, `fc_loc.*`).
    pub fn is_localization(name: &str) -> bool {
        name.starts_with("localization.") || name.starts_with("fc_loc.")
    }
}
