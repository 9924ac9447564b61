//! The distorted-MNIST networks of Jaderberg et al. (2015), Table 1: the CNN baseline and the
//! ST-CNNs (the same classifier with a localisation net and a transform head in front).
//!
//! The paper's appendix gives the layers only in outline; what is chosen here (and written in
//! docs/paper-table.md):
//!
//! * CNN: conv 9×9, 32 filters → max-pool 2 → ReLU → conv 7×7, 32 filters → max-pool 2 → ReLU →
//!   linear to the 10 classes (no padding; about 54k parameters on 28×28, 61k on 42×42).
//! * Localisation net: conv 5×5, 20 filters → max-pool 2 → ReLU → conv 5×5, 20 filters →
//!   max-pool 2 → ReLU → linear 50 → ReLU, then the head's regressor (on 42×42 inputs a max-pool 2
//!   first, so the net sees the digit at about 28×28's scale).
//! * The transformer samples the canvas' size (28 or 42), so the classifier is the CNN's, and
//!   bilinearly with zero padding, as the paper.
//! * Normalisation: MNIST's mean and std before the network, as the tutorial.

use crate::spec::{InputSpec, Layer, ModelSpec, Naming, Sampler, TpsHead, Transform};

/// The paper's heads that Table 1 compares.
pub const PAPER_HEADS: [&str; 3] = ["affine", "projective", "tps"];

fn conv(out: usize, kernel: usize) -> Layer {
    Layer::Conv2d {
        out,
        kernel,
        stride: 1,
        padding: 0,
    }
}

const POOL: Layer = Layer::MaxPool2d {
    kernel: 2,
    stride: None,
};

/// The paper's CNN (`head` None) or ST-CNN with `head` (`affine`, `projective`, `tps`, or the
/// constrained `attention`, `similarity`) on `canvas`×`canvas` inputs (28 or 42).
pub fn paper_spec(canvas: usize, head: Option<&str>) -> Option<ModelSpec> {
    if canvas != 28 && canvas != 42 {
        return None;
    }
    let classifier = vec![
        conv(32, 9),
        POOL,
        Layer::Relu,
        conv(32, 7),
        POOL,
        Layer::Relu,
        Layer::Flatten,
        Layer::Linear { out: 10 },
    ];
    let (localization, transform) = match head {
        None => (vec![], Transform::None),
        Some(h) => {
            let s = Sampler::new([canvas, canvas]);
            let transform = match h {
                "affine" => Transform::Affine(s),
                "attention" => Transform::Attention(s),
                "similarity" => Transform::Similarity(s),
                "projective" => Transform::Projective(s),
                "tps" => Transform::Tps(TpsHead {
                    grid: 4,
                    output: s.output,
                    padding: s.padding,
                    align_corners: s.align_corners,
                    mode: s.mode,
                }),
                _ => return None,
            };
            let mut loc = if canvas == 42 { vec![POOL] } else { vec![] };
            loc.extend([
                conv(20, 5),
                POOL,
                Layer::Relu,
                conv(20, 5),
                POOL,
                Layer::Relu,
                Layer::Flatten,
                Layer::Linear { out: 50 },
                Layer::Relu,
            ]);
            (loc, transform)
        }
    };
    Some(ModelSpec {
        input: InputSpec {
            channels: 1,
            height: canvas,
            width: canvas,
            mean: Some(vec![stn_data::MNIST_MEAN]),
            std: Some(vec![stn_data::MNIST_STD]),
        },
        localization,
        transform,
        classifier,
        classes: 10,
        names: Naming::Sequential,
    })
}

/// `paper-cnn`, `paper-st-<head>`, each with `-42` for the 42×42 canvas (RTS).
pub(crate) fn paper_preset(name: &str) -> Option<ModelSpec> {
    let rest = name.strip_prefix("paper-")?;
    let (rest, canvas) = match rest.strip_suffix("-42") {
        Some(r) => (r, 42),
        None => (rest, 28),
    };
    match rest {
        "cnn" => paper_spec(canvas, None),
        _ => paper_spec(canvas, Some(rest.strip_prefix("st-")?)),
    }
}
