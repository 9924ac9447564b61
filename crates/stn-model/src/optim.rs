//! The optimisers, on the host master copy of the parameters, with PyTorch's update rules.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Params;

/// `sgd` (the seed's plain SGD), `momentum` (SGD, momentum 0.9, PyTorch's form) or `adam`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain SGD.
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    /// Adam (β = 0.9, 0.999; ε = 1e-8).
    Adam,
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "momentum" => Ok(OptimizerKind::Momentum),
            "adam" => Ok(OptimizerKind::Adam),
            o => Err(format!(
                "unknown optimizer '{o}': expected sgd, momentum or adam"
            )),
        }
    }
}

const MOMENTUM: f32 = 0.9;
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// An optimiser and its state: one or two buffers per parameter and a step count.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    /// Which update.
    pub kind: OptimizerKind,
    /// The base learning rate.
    pub lr: f32,
    /// Learning-rate factor of the localisation head (`localization.*`, `fc_loc.*`).
    pub loc_lr_scale: f32,
    /// Factor of the learning-rate schedule for the current epoch (1 with a constant rate); set by
    /// the trainer from the epoch, so it is not part of a checkpoint.
    pub schedule: f32,
    /// Updates done.
    pub step: u64,
    /// Momentum buffers (momentum) or first moments (adam).
    pub m: Vec<Vec<f32>>,
    /// Second moments (adam).
    pub v: Vec<Vec<f32>>,
}

impl Optimizer {
    /// A fresh optimiser (zero state) for `params`.
    pub fn new(kind: OptimizerKind, lr: f32, loc_lr_scale: f32, params: &Params) -> Self {
        let zeros = |on: bool| {
            if on {
                params.data.iter().map(|d| vec![0.0; d.len()]).collect()
            } else {
                vec![]
            }
        };
        Optimizer {
            kind,
            lr,
            loc_lr_scale,
            schedule: 1.0,
            step: 0,
            m: zeros(kind != OptimizerKind::Sgd),
            v: zeros(kind == OptimizerKind::Adam),
        }
    }

    /// One update of every parameter from its gradient.
    pub fn update(&mut self, params: &mut Params, grads: &[Vec<f32>]) {
        self.step += 1;
        let t = self.step as i32;
        for (i, (p, g)) in params.data.iter_mut().zip(grads).enumerate() {
            let base = self.lr * self.schedule;
            let lr = if Params::is_localization(&params.names[i]) {
                base * self.loc_lr_scale
            } else {
                base
            };
            match self.kind {
                OptimizerKind::Sgd => {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * g;
                    }
                }
                OptimizerKind::Momentum => {
                    // PyTorch: buf = g on the first step, then buf = μ·buf + g; p -= lr·buf.
                    let first = self.step == 1;
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(self.m[i].iter_mut()) {
                        *b = if first { g } else { MOMENTUM * *b + g };
                        *p -= lr * *b;
                    }
                }
                OptimizerKind::Adam => {
                    let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
                    for (((p, &g), m), v) in p
                        .iter_mut()
                        .zip(g)
                        .zip(self.m[i].iter_mut())
                        .zip(self.v[i].iter_mut())
                    {
                        *m = BETA1 * *m + (1.0 - BETA1) * g;
                        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    fn one_param(v: f32) -> Params {
        Params {
            net: Arch::SEED.into(),
            names: vec!["fc2.bias".into()],
            shapes: vec![vec![1]],
            data: vec![vec![v]],
        }
    }

    #[test]
    fn updates_follow_pytorch() {
        // SGD: p − lr·g.
        let mut p = one_param(1.0);
        let mut o = Optimizer::new(OptimizerKind::Sgd, 0.1, 1.0, &p);
        o.update(&mut p, &[vec![2.0]]);
        assert!((p.data[0][0] - 0.8).abs() < 1e-7);
        // Momentum: buf = g, then 0.9·buf + g.
        let mut p = one_param(1.0);
        let mut o = Optimizer::new(OptimizerKind::Momentum, 0.1, 1.0, &p);
        o.update(&mut p, &[vec![2.0]]);
        o.update(&mut p, &[vec![2.0]]);
        assert!((p.data[0][0] - (1.0 - 0.2 - 0.1 * 3.8)).abs() < 1e-6);
        // Adam's first step moves each parameter by lr·sign(g).
        let mut p = one_param(1.0);
        let mut o = Optimizer::new(OptimizerKind::Adam, 0.01, 1.0, &p);
        o.update(&mut p, &[vec![-5.0]]);
        assert!((p.data[0][0] - 1.01).abs() < 1e-6);
        // The localisation head's learning rate is scaled.
        let mut p = Params {
            names: vec!["fc_loc.2.bias".into()],
            ..one_param(1.0)
        };
        let mut o = Optimizer::new(OptimizerKind::Sgd, 0.1, 0.5, &p);
        o.update(&mut p, &[vec![2.0]]);
        assert!((p.data[0][0] - 0.9).abs() < 1e-7);
        assert!("rmsprop"
            .parse::<OptimizerKind>()
            .unwrap_err()
            .contains("rmsprop"));
    }

    #[test]
    fn adam_and_momentum_match_pytorch_past_step_one() {
        // torch.optim.Adam(lr=0.01) and SGD(lr=0.1, momentum=0.9) on one parameter over four
        // steps of changing gradients (scripts/golden_adam.py): from step 2 on, the betas, the
        // bias corrections and the momentum decide the values, which a first step alone cannot
        // tell apart.
        let grads = [-5.0f32, 3.0, 0.5, -2.0];
        for (kind, lr, torch) in [
            (
                OptimizerKind::Adam,
                0.01,
                [1.01f32, 1.011915, 1.0128436, 1.0154449],
            ),
            (OptimizerKind::Momentum, 0.1, [1.5, 1.65, 1.735, 2.0115001]),
        ] {
            let mut p = one_param(1.0);
            let mut o = Optimizer::new(kind, lr, 1.0, &p);
            for (step, (&g, &want)) in grads.iter().zip(&torch).enumerate() {
                o.update(&mut p, &[vec![g]]);
                let got = p.data[0][0];
                assert!(
                    (got - want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                    "{kind:?} step {}: {got} vs PyTorch's {want}",
                    step + 1
                );
            }
        }
    }
}
