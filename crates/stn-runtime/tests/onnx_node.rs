//! The ONNX standard's backend node tests of the operators `stn_runtime::register_tract_ops`
//! puts in tract's table — GridSample and AffineGrid (26 cases), MaxPool (19) and Conv (6), rebuilt
//! by `scripts/onnx_node_tests.py` from the onnx wheel's generators — on tract. Our MaxPool and
//! Conv take the plain cases (`test_maxpool_2d_default`, `_strides`, `_precomputed_strides`,
//! `test_basic_conv_without_padding`) and hand the others to tract's, so both paths are checked.
//! Inputs are given as run-time values (their shapes known when the model is planned, not their
//! values): AffineGrid's `size` is a run-time input.
//!
//! Every case that holds the operators passes at 1e-5 (the hand-typed, 4-decimal
//! `test_gridsample_bicubic` at ONNX's own node-test tolerance, rtol 1e-3, atol 1e-7). The
//! `_expanded` AffineGrid cases hold the operator's function body instead (If, Split, Range, …);
//! their outcome on tract is reported, not asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::prelude::*;
use tract_onnx::tensor::{load_tensor, proto_from_reader};
use tract_onnx::tract_hir::internal::ensure;

fn load(path: &Path) -> TractResult<Tensor> {
    let pb = proto_from_reader(std::fs::File::open(path)?)?;
    load_tensor(&FopenDataResolver, &pb, None)
}

/// Runs one case; the worst difference from its expected outputs, relative to the tolerance.
fn run_case(dir: &Path, rtol: f32, atol: f32) -> TractResult<f32> {
    let mut onnx = tract_onnx::onnx();
    stn_runtime::register_tract_ops(&mut onnx);
    let mut model = onnx.model_for_path(dir.join("model.onnx"))?;
    let set = dir.join("test_data_set_0");
    let mut inputs = Vec::new();
    while set.join(format!("input_{}.pb", inputs.len())).exists() {
        inputs.push(load(&set.join(format!("input_{}.pb", inputs.len())))?);
    }
    for (i, t) in inputs.iter().enumerate() {
        model.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let outs = plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect())?;
    let mut worst = 0f32;
    for (j, got) in outs.iter().enumerate() {
        let want = load(&set.join(format!("output_{j}.pb")))?;
        ensure!(
            got.shape() == want.shape(),
            "output {j}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        );
        let (g, w) = (got.cast_to::<f32>()?, want.cast_to::<f32>()?);
        for (&a, &b) in g
            .to_plain_array_view::<f32>()?
            .iter()
            .zip(w.to_plain_array_view::<f32>()?.iter())
        {
            worst = worst.max((a - b).abs() / (atol + rtol * b.abs()));
        }
    }
    Ok(worst)
}

#[test]
fn onnx_backend_node_tests_of_our_operators_pass_on_tract() {
    let python = std::env::var("STN_PYTHON")
        .expect("STN_PYTHON: a Python with onnx (scripts/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/onnx_node_tests.py");
    let o = Command::new(python)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let count = |prefixes: &[&str]| {
        cases
            .iter()
            .filter(|c| {
                let name = c.file_name().unwrap().to_string_lossy();
                prefixes.iter().any(|p| name.starts_with(p))
            })
            .count()
    };
    assert_eq!(
        count(&["test_gridsample", "test_affine_grid"]),
        26,
        "the onnx wheel's GridSample and AffineGrid cases"
    );
    assert_eq!(count(&["test_maxpool"]), 19, "its MaxPool cases");
    assert_eq!(
        count(&["test_basic_conv", "test_conv_"]),
        6,
        "its Conv cases"
    );
    assert_eq!(cases.len(), 51);
    let mut failed = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (rtol, atol) = if name == "test_gridsample_bicubic" {
            (1e-3, 1e-7)
        } else {
            (1e-5, 1e-5)
        };
        let verdict = run_case(case, rtol, atol);
        let ok = matches!(verdict, Ok(w) if w <= 1.0);
        let line = match &verdict {
            Ok(w) => format!(
                "{name}: {}",
                if ok {
                    "pass".to_string()
                } else {
                    format!("off by {w:.1}× the tolerance")
                }
            ),
            Err(e) => format!("{name}: {}", format!("{e:#}").lines().next().unwrap_or("")),
        };
        report.push(line.clone());
        if !ok && !name.ends_with("_expanded") {
            failed.push(line);
        }
    }
    println!("{}", report.join("\n"));
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}
