//! `conv_pool_relu` against the ops it fuses (`conv2d`, then `max_pool2d_relu`; with a scale, dfdx's
//! broadcasting `mul` between them, as Dropout2d): the same output and the same gradients for the
//! input, the weight and the bias, bit for bit (`==`, so a zero's sign may differ: see the op's
//! docs), in f64 and f32, at the seed network's four conv blocks and an odd size, with the input
//! traced or not. The runs follow one another in one process, so the fused op's recycled buffers
//! hold earlier runs' values: one it fails to overwrite or zero shows here.

use dfdx::prelude::*;
use stn_ops::{
    conv2d, conv_pool_relu, conv_pool_relu_scaled, max_pool2d_relu, ConvPoolRelu, Dyn4, OpDevice,
    Real,
};

fn values<E: Real>(n: usize, seed: f64, scale: f64) -> Vec<E> {
    (0..n)
        .map(|i| E::of((i as f64 * 0.7137 + seed).sin() * scale))
        .collect()
}

/// Output, then the gradients of x (empty when untraced), weight and bias. With `scaled`, a
/// Dropout2d-like mask (0 or 2 per image and channel) scales the conv's output.
fn run<E: Real>(fused: bool, [n, c, h, o, k]: [usize; 5], traced: bool, scaled: bool) -> [Vec<E>; 4]
where
    Cpu: OpDevice<E>,
{
    let dev = Cpu::default();
    let x: Tensor<Dyn4, E, Cpu> =
        dev.tensor_from_vec(values(n * c * h * h, 0.3, 1.0), (n, c, h, h));
    let w: Tensor<Dyn4, E, Cpu> =
        dev.tensor_from_vec(values(o * c * k * k, 1.1, 0.4), (o, c, k, k));
    // Biases of both signs: some windows end below zero, where the ReLU stops the gradient.
    let b: Tensor<(usize,), E, Cpu> = dev.tensor_from_vec(values(o, 2.9, 2.0), (o,));
    let (wt, bt) = (w.leaky_trace(), b.leaky_trace());
    let mask: Vec<E> = (0..n * o)
        .map(|i| E::of(if (i * 7) % 5 < 2 { 0.0 } else { 2.0 }))
        .collect();
    let mask: Tensor<(usize, usize), E, Cpu> = dev.tensor_from_vec(mask, (n, o));
    let y = if fused {
        let mask = scaled.then_some(mask);
        if traced {
            conv_pool_relu_scaled(x.leaky_trace(), wt, bt, mask)
        } else if scaled {
            conv_pool_relu_scaled(x.clone(), wt, bt, mask)
        } else {
            conv_pool_relu(x.clone(), wt, bt)
        }
    } else {
        let y = if traced {
            conv2d(x.leaky_trace(), wt, bt).unwrap()
        } else {
            conv2d(x.clone(), wt, bt).unwrap()
        };
        let s = *y.shape();
        let y = if scaled {
            y * mask.broadcast_like::<_, Axes2<2, 3>>(&s)
        } else {
            y
        };
        max_pool2d_relu(y, 2, 2)
    }
    .unwrap();
    let shape = *y.shape();
    let r: Tensor<Dyn4, E, Cpu> =
        dev.tensor_from_vec(values(shape.num_elements(), 2.2, 1.0), shape);
    let out = y.retaped::<NoneTape>().as_vec();
    let g = (y * r).sum::<Rank0, _>().backward();
    let gx = if traced {
        g.get(&x).as_vec()
    } else {
        Vec::new()
    };
    [out, gx, g.get(&w).as_vec(), g.get(&b).as_vec()]
}

fn same<E: Real>(dims: [usize; 5], traced: bool, scaled: bool)
where
    Cpu: OpDevice<E>,
{
    let (a, b) = (
        run::<E>(true, dims, traced, scaled),
        run::<E>(false, dims, traced, scaled),
    );
    for (what, (u, v)) in ["output", "grad x", "grad weight", "grad bias"]
        .iter()
        .zip(a.iter().zip(&b))
    {
        assert_eq!(u.len(), v.len(), "{dims:?} {what}");
        for (i, (p, q)) in u.iter().zip(v).enumerate() {
            assert!(p == q, "{dims:?} {what}[{i}]: fused {p:?}, three ops {q:?}");
        }
    }
    // The ReLU both passed and stopped gradients.
    assert!(
        a[0].iter().any(|&v| v > E::zero()) && a[0].iter().any(|&v| v == E::zero()),
        "{dims:?}: the ReLU must pass some windows and stop others"
    );
    assert!(a[2].iter().any(|&g| g != E::zero()));
}

#[test]
fn fused_block_equals_conv_then_pool_and_relu_bit_for_bit() {
    // [n, c, h, o, k]: localization.0, localization.3 (a 7×7 conv output: the pool drops a row and
    // a column), conv1, conv2, and an odd size.
    for dims in [
        [4, 1, 28, 8, 7],
        [5, 8, 11, 10, 5],
        [4, 1, 28, 10, 5],
        [4, 10, 12, 20, 5],
        [3, 2, 13, 3, 4],
    ] {
        for (traced, scaled) in [(false, false), (true, false), (true, true)] {
            same::<f64>(dims, traced, scaled);
            same::<f32>(dims, traced, scaled);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Cpu::default();
    let x: Tensor<Dyn4, f32, Cpu> = dev.zeros_like(&(2, 3, 8, 8));
    let w: Tensor<Dyn4, f32, Cpu> = dev.zeros_like(&(4, 2, 3, 3));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(4,));
    let e = conv_pool_relu(x, w.leaky_trace(), b.leaky_trace())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("weight has 2 input channels, input has 3"),
        "{e}"
    );
    // A scale that is not images × output channels.
    let w: Tensor<Dyn4, f32, Cpu> = dev.zeros_like(&(4, 3, 3, 3));
    let x: Tensor<Dyn4, f32, Cpu> = dev.zeros_like(&(2, 3, 8, 8));
    let s: Tensor<(usize, usize), f32, Cpu> = dev.zeros_like(&(2, 5));
    let e = conv_pool_relu_scaled(x, w.leaky_trace(), b.leaky_trace(), Some(s))
        .err()
        .unwrap();
    assert!(e.to_string().contains("scale must be 2×4"), "{e}");
}

/// The inference-only block ([`ConvPoolRelu`], the fused forward's) against `conv2d` then
/// `max_pool2d_relu`, one image at a time through one reused scratch, bit for bit.
fn inference_block_same<E: Real>([n, c, h, o, k]: [usize; 5])
where
    Cpu: OpDevice<E>,
{
    let dev = Cpu::default();
    let xs: Vec<E> = values(n * c * h * h, 0.3, 1.0);
    let wv: Vec<E> = values(o * c * k * k, 1.1, 0.4);
    let bv: Vec<E> = values(o, 2.9, 2.0);
    let x: Tensor<Dyn4, E, Cpu> = dev.tensor_from_vec(xs.clone(), (n, c, h, h));
    let w: Tensor<Dyn4, E, Cpu> = dev.tensor_from_vec(wv.clone(), (o, c, k, k));
    let b: Tensor<(usize,), E, Cpu> = dev.tensor_from_vec(bv.clone(), (o,));
    let want = max_pool2d_relu(conv2d(x, w, b).unwrap(), 2, 2)
        .unwrap()
        .as_vec();
    let block = ConvPoolRelu::new(c, h, h, o, k);
    let packed = block.pack(&wv);
    // NaN-filled: the block must not read what it has not written.
    let mut scratch = vec![E::nan(); block.scratch_len()];
    let len = block.out_len();
    for (i, img) in xs.chunks(c * h * h).enumerate() {
        let mut out = vec![E::nan(); len];
        block.run(img, &packed, &bv, &mut scratch, &mut out);
        let want = &want[i * len..(i + 1) * len];
        for (j, (g, w)) in out.iter().zip(want).enumerate() {
            assert!(
                g == w,
                "{:?} image {i} out[{j}]: {g:?} vs {w:?}",
                [n, c, h, o, k]
            );
        }
    }
}

#[test]
fn inference_block_equals_conv_then_pool_and_relu_bit_for_bit() {
    // The one-channel row kernel (8 and 10 channels): rows of 22 (one wide and one 8-pixel
    // block), 24, 36 (two wide blocks and one), and 23 rows (odd: the last row without a pair);
    // the packed products: localization.3 (49 columns: the partial block read in place), conv2
    // (64), and odd shapes through the general kernels.
    for dims in [
        [3, 1, 28, 8, 7],
        [3, 1, 28, 10, 5],
        [2, 1, 42, 8, 7],
        [2, 1, 27, 10, 5],
        [3, 8, 11, 10, 5],
        [3, 10, 12, 20, 5],
        [2, 2, 13, 3, 4],
        [2, 1, 13, 3, 4],
    ] {
        inference_block_same::<f32>(dims);
        inference_block_same::<f64>(dims);
    }
}
