//! Helpers of the ops tests: PyTorch's golden values and tolerant comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// `../shared/fixtures` beside the repository, or `STN_FIXTURES`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("STN_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// A tensor of the fixtures: shape and row-major data (float64).
#[derive(Deserialize, Clone, Debug)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl T {
    pub fn dims4(&self) -> (usize, usize, usize, usize) {
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

pub fn load<C: for<'de> Deserialize<'de>>(name: &str) -> C {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
pub struct Cases<C> {
    pub cases: Vec<C>,
}

/// Asserts |a − b| ≤ atol + rtol·|b| element-wise, with a message naming the worst element.
/// A negative `atol` means `|atol|·max|b|`: a tolerance relative to the tensor's scale, the right
/// one for float32 sums with cancellation.
pub fn assert_close<A: Into<f64> + Copy>(what: &str, a: &[A], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let atol = if atol < 0.0 {
        -atol * b.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    } else {
        atol
    };
    let rtol = rtol.abs();
    let mut worst = (0usize, 0.0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let x: f64 = x.into();
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if excess > worst.1 || x.is_nan() != y.is_nan() {
            worst = (i, excess.max(f64::MIN_POSITIVE));
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i}: got {}, expected {} (atol {atol}, rtol {rtol})",
            a[i].into(),
            b[i]
        );
    }
}

/// Asserts `|a − b| ≤ 1e-5 · max(1, max|b|)` element-wise: two implementations of one op (CPU and
/// CUDA kernel, or CPU op and host-compiled kernel) agreeing at the float32 noise floor.
pub fn assert_close_scaled(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}

/// Uniform values in ±scale.
pub fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect()
}

/// Central differences of `f` at `p`, one coordinate at a time.
pub fn numeric_grad(p: &[f64], eps: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut q = p.to_vec();
    (0..p.len())
        .map(|i| {
            q[i] = p[i] + eps;
            let hi = f(&q);
            q[i] = p[i] - eps;
            let lo = f(&q);
            q[i] = p[i];
            (hi - lo) / (2.0 * eps)
        })
        .collect()
}

pub fn assert_grad(what: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= tol * (1.0 + n.abs()),
            "{what}[{i}]: analytic {a}, numeric {n}"
        );
    }
}
