//! A spatial transformer inside your own dfdx model: dfdx's `Linear` layers for the localisation
//! net and the classifier, stn's `affine_grid` and `grid_sample` between them, trained with dfdx's
//! Adam. The ops take and give dfdx tensors on dfdx's tape; their errors and dfdx's meet in
//! `OpError` (`From<CpuError>`), so one `?` carries both.
//!
//! ```sh
//! cargo run --release -p stn-ops --example stn_layer
//! ```
//!
//! The task: 12×12 images with a bar somewhere, horizontal (class 0) or vertical (class 1).

use dfdx::optim::{Adam, AdamConfig};
use dfdx::prelude::*;
use stn_ops::{affine_grid, grid_sample, OpError, Padding};

const S: usize = 12;
const PX: usize = S * S;

/// The localisation net (to the 6 parameters of an affine map) and the classifier.
type Model = (
    (Linear<PX, 16>, ReLU, Linear<16, 6>),
    (Linear<PX, 32>, ReLU, Linear<32, 2>),
);
type Built = <Model as BuildOnDevice<Cpu, f32>>::Built;

type Images = Tensor<(usize, Const<1>, Const<S>, Const<S>), f32, Cpu>;
type OneHot = Tensor<(usize, Const<2>), f32, Cpu>;

/// The STN and the classifier: theta from the flattened images, the sampled images, the logits.
fn forward<T>(
    model: &Built,
    x: Images,
    flat: Tensor<(usize, Const<PX>), f32, Cpu, T>,
) -> Result<Tensor<(usize, Const<2>), f32, Cpu, T>, OpError>
where
    T: Tape<f32, Cpu> + Merge<NoneTape>,
{
    let n = x.shape().0;
    let theta = model.0.try_forward(flat)?;
    let theta = theta.try_reshape_like(&(n, Const::<2>, Const::<3>))?;
    let grid = affine_grid(theta, [n, 1, S, S], false)?;
    let warped = grid_sample(x, grid, Padding::Zeros, false)?;
    let warped = warped.try_reshape_like(&(n, Const::<PX>))?;
    Ok(model.1.try_forward(warped)?)
}

/// `n` images and their one-hot labels, from a seeded generator.
fn batch(dev: &Cpu, n: usize, seed: &mut u64) -> (Images, OneHot, Vec<usize>) {
    let mut next = move || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as usize
    };
    let (mut x, mut y, mut labels) = (vec![0.0f32; n * PX], vec![0.0f32; n * 2], vec![]);
    for i in 0..n {
        let class = next() % 2;
        let (len, at, along) = (3 + next() % 6, next() % S, next() % (S - 8));
        for k in 0..len {
            let (r, c) = if class == 0 {
                (at, along + k)
            } else {
                (along + k, at)
            };
            x[i * PX + r * S + c] = 1.0;
        }
        y[i * 2 + class] = 1.0;
        labels.push(class);
    }
    (
        dev.tensor_from_vec(x, (n, Const, Const, Const)),
        dev.tensor_from_vec(y, (n, Const)),
        labels,
    )
}

fn main() -> Result<(), OpError> {
    let dev = Cpu::default();
    let mut model = dev.build_module::<Model, f32>();
    // The regressor starts at the identity transform, as every STN does.
    model.0 .2.weight = dev.zeros();
    model.0 .2.bias = dev.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let mut grads = model.alloc_grads();
    let mut opt = Adam::new(
        &model,
        AdamConfig {
            lr: 3e-3,
            ..Default::default()
        },
    );
    let mut seed = 1;
    for step in 1..=300 {
        let (x, y, _) = batch(&dev, 32, &mut seed);
        let flat = x
            .clone()
            .try_reshape_like(&(32, Const::<PX>))?
            .traced(grads);
        let loss = cross_entropy_with_logits_loss(forward(&model, x, flat)?, y);
        if step % 100 == 0 {
            println!("step {step}: loss {:.4}", loss.array());
        }
        grads = loss.backward();
        opt.update(&mut model, &grads)
            .expect("the model's own gradients");
        model.zero_grads(&mut grads);
    }
    let (x, _, labels) = batch(&dev, 500, &mut seed);
    let flat = x.clone().try_reshape_like(&(500, Const::<PX>))?;
    let logits = forward(&model, x, flat)?.as_vec();
    let correct = labels
        .iter()
        .enumerate()
        .filter(|&(i, &c)| (logits[i * 2 + 1] > logits[i * 2]) as usize == c)
        .count();
    println!("accuracy on 500 new images: {:.1}%", correct as f64 / 5.0);
    if correct < 450 {
        return Err(OpError::shape(
            "stn_layer",
            "the model did not learn the task",
        ));
    }
    Ok(())
}
