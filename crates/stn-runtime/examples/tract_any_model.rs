//! Runs any ONNX model that uses GridSample or AffineGrid on tract, with stn's operators
//! registered (tract 0.23 has no AffineGrid, and a scalar GridSample).
//!
//! ```sh
//! cargo run --release -p stn-runtime --example tract_any_model -- MODEL.onnx
//! ```
//!
//! Every input is fed zeros, symbolic dimensions (a batch) set to 1; the outputs' shapes and first
//! values are printed. Without an argument it runs the repository's `models/stn.onnx`.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/stn.onnx").to_string()
    });
    let mut onnx = tract_onnx::onnx();
    stn_runtime::register_tract_ops(&mut onnx);
    let mut model = onnx.model_for_path(&path)?;
    // Concrete input shapes: each symbolic dimension (the batch) becomes 1.
    let mut inputs = tvec![];
    for i in 0..model.input_outlets()?.len() {
        let fact = model.input_fact(i)?.clone();
        let dims: Vec<usize> = fact
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_usize().ok()).unwrap_or(1))
            .collect();
        let dt = fact.datum_type.concretize().unwrap_or(f32::datum_type());
        model.set_input_fact(i, InferenceFact::dt_shape(dt, &dims))?;
        inputs.push(Tensor::zero_dt(dt, &dims)?.into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    for (i, out) in plan.run(inputs)?.iter().enumerate() {
        let first: Vec<String> = out
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .take(4)
            .map(|v| format!("{v:.4}"))
            .collect();
        println!(
            "output {i}: shape {:?}, first values {}",
            out.shape(),
            first.join(" ")
        );
    }
    Ok(())
}
