//! The ops that declare `CustomOp::CPU_FWD_WRITES_ALL` (a runtime may then hand their forward an
//! output that is not zeroed) write every output element: their forward into an output filled
//! with NaN is bit for bit their forward into a zeroed one, on every path of their kernels.

mod common;

use common::randn;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stn_ops::op::Buf;
use stn_ops::{Conv2d, CustomOp, MaxPool2d};

fn f32s(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    randn(rng, n, 1.0).into_iter().map(|v| v as f32).collect()
}

/// `op`'s forward on `inputs` into a zeroed output and into a NaN-filled one.
fn both<Op: CustomOp<f32>>(op: &Op, inputs: &[(Vec<f32>, Vec<usize>)]) -> (Vec<u32>, Vec<u32>) {
    assert!(Op::CPU_FWD_WRITES_ALL, "{} does not declare it", Op::NAME);
    let bufs: Vec<Buf<f32>> = inputs
        .iter()
        .map(|(d, s)| Buf { data: d, dims: s })
        .collect();
    let dims = stn_ops::checked_out_dims(op, &bufs).expect("valid shapes");
    let len = dims.iter().product();
    let run = |fill: f32| {
        let mut out = vec![fill; len];
        op.cpu_fwd(&bufs, &mut out);
        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    (run(0.0), run(f32::NAN))
}

#[test]
fn conv2d_writes_every_output_on_each_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // One channel (implicit im2col), several (explicit, images grouped side by side), odd sides
    // and a single image.
    for (n, c, h, w, o, k) in [
        (5, 1, 28, 28, 8, 7),
        (4, 10, 12, 12, 20, 5),
        (3, 8, 11, 11, 10, 5),
        (2, 3, 9, 13, 5, 3),
        (1, 1, 6, 5, 3, 2),
        (7, 2, 5, 5, 4, 5),
    ] {
        let inputs = [
            (f32s(&mut rng, n * c * h * w), vec![n, c, h, w]),
            (f32s(&mut rng, o * c * k * k), vec![o, c, k, k]),
            (f32s(&mut rng, o), vec![o]),
        ];
        let (zeroed, nan) = both(&Conv2d, &inputs);
        assert_eq!(zeroed, nan, "conv2d {:?}", [n, c, h, w, o, k]);
    }
}

#[test]
fn max_pool2d_writes_every_output_on_each_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (kernel, stride) in [(2, 2), (3, 2), (2, 1), (3, 3)] {
        for relu in [false, true] {
            for (n, c, h, w) in [(3, 8, 22, 22), (2, 3, 7, 9), (1, 1, 3, 3), (4, 2, 17, 40)] {
                let op = MaxPool2d {
                    kernel,
                    stride,
                    relu,
                };
                let inputs = [(f32s(&mut rng, n * c * h * w), vec![n, c, h, w])];
                let (zeroed, nan) = both(&op, &inputs);
                assert_eq!(zeroed, nan, "{op:?} on {:?}", [n, c, h, w]);
            }
        }
    }
}
