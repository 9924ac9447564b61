//! Our ops in tract's table (`TractRunner::onnx`) against tract's own: each small ONNX model runs on
//! tract with its own ops (the reference) and with ours, and the outputs must agree at the f32
//! noise floor; the plain cases must really run our kernels and the others tract's.

use stn_onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use stn_runtime::TractRunner;
use tract_onnx::prelude::*;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}
fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(s.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn info(name: &str, dims: &[usize], elem: DataType) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Deterministic values in [-scale, scale].
fn values(len: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| scale * ((i as f32 * 0.7548 + seed) * 12.9898).sin())
        .collect()
}

/// One-node model: the inputs (name, dims) fed at run time, the weights as initializers.
fn one_node(
    op: &str,
    attrs: Vec<AttributeProto>,
    inputs: &[(&str, &[usize])],
    weights: &[(&str, &[usize], Vec<f32>)],
    opset: i64,
) -> Vec<u8> {
    one_node_of(DataType::Float, op, attrs, inputs, weights, opset)
}

/// [`one_node`] with inputs, weights and output of type `elem` (Float or Double; the weights'
/// values converted).
fn one_node_of(
    elem: DataType,
    op: &str,
    attrs: Vec<AttributeProto>,
    inputs: &[(&str, &[usize])],
    weights: &[(&str, &[usize], Vec<f32>)],
    opset: i64,
) -> Vec<u8> {
    let raw = |data: &[f32]| -> Vec<u8> {
        match elem {
            DataType::Double => data
                .iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
            _ => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    };
    let node = NodeProto {
        input: inputs
            .iter()
            .map(|i| i.0)
            .chain(weights.iter().map(|w| w.0))
            .map(String::from)
            .collect(),
        output: vec!["y".into()],
        name: Some(op.into()),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    };
    let graph = GraphProto {
        node: vec![node],
        name: Some("t".into()),
        initializer: weights
            .iter()
            .map(|(name, dims, data)| TensorProto {
                name: Some((*name).into()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(elem as i32),
                raw_data: Some(raw(data)),
                ..Default::default()
            })
            .collect(),
        input: inputs.iter().map(|(n, d)| info(n, d, elem)).collect(),
        output: vec![ValueInfoProto {
            name: Some("y".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    stn_onnx::to_bytes(&ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    })
}

/// Runs `bytes` on tract with `onnx`'s op table: the output and the names of the planned ops.
fn run(
    onnx: &tract_onnx::model::Onnx,
    bytes: &[u8],
    inputs: &[Vec<f32>],
    dims: &[&[usize]],
) -> (Vec<f32>, Vec<String>) {
    let model = onnx
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap();
    let ops = model
        .nodes()
        .iter()
        .map(|n| n.op().name().to_string())
        .collect();
    let plan = model.into_runnable().unwrap();
    let inputs: TVec<TValue> = inputs
        .iter()
        .zip(dims)
        .map(|(v, d)| Tensor::from_shape(d, v).unwrap().into())
        .collect();
    let out = plan.run(inputs).unwrap();
    let y = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    (y, ops)
}

/// Ours and tract's own agree (allclose 1e-5), and `ours_used` says whether `op` ran ours.
fn check(bytes: &[u8], inputs: &[Vec<f32>], dims: &[&[usize]], op: &str, ours_used: bool) {
    let (want, theirs) = run(&tract_onnx::onnx(), bytes, inputs, dims);
    let (got, ops) = run(&TractRunner::onnx(), bytes, inputs, dims);
    assert!(
        !theirs.iter().any(|o| o == op),
        "reference must be tract's own"
    );
    assert_eq!(ops.iter().any(|o| o == op), ours_used, "{op} in {ops:?}");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{op} element {i}: ours {g}, tract {w}"
        );
    }
}

#[test]
fn conv_matches_tracts_own_and_leaves_it_the_cases_ours_does_not_cover() {
    let x_dims: &[usize] = &[2, 3, 9, 8];
    let x = values(2 * 3 * 9 * 8, 0.1, 1.0);
    let w = values(4 * 3 * 3 * 2, 0.2, 0.5);
    let b = values(4, 0.3, 0.5);
    let weights = |bias: bool| {
        let mut v: Vec<(&str, &[usize], Vec<f32>)> = vec![("w", &[4, 3, 3, 2], w.clone())];
        if bias {
            v.push(("b", &[4], b.clone()));
        }
        v
    };
    let k = || ints("kernel_shape", &[3, 2]);
    // Plain (with and without bias, default and explicit attributes): ours.
    for (attrs, bias) in [
        (vec![k()], true),
        (vec![k()], false),
        (
            vec![
                k(),
                ints("strides", &[1, 1]),
                ints("pads", &[0, 0, 0, 0]),
                int("group", 1),
            ],
            true,
        ),
    ] {
        let m = one_node("Conv", attrs, &[("x", x_dims)], &weights(bias), 16);
        check(&m, std::slice::from_ref(&x), &[x_dims], "StnConv", true);
    }
    // Padding, stride, dilation: tract's own Conv.
    for attrs in [
        vec![k(), ints("pads", &[1, 0, 1, 0])],
        vec![k(), ints("strides", &[2, 1])],
        vec![k(), ints("dilations", &[2, 2])],
    ] {
        let m = one_node("Conv", attrs, &[("x", x_dims)], &weights(true), 16);
        check(&m, std::slice::from_ref(&x), &[x_dims], "StnConv", false);
    }
}

/// Runs the f64 model `bytes` on tract with `onnx`'s op table: the output.
fn run_f64(onnx: &tract_onnx::model::Onnx, bytes: &[u8], x: &[f64], dims: &[usize]) -> Vec<f64> {
    let plan = onnx
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = plan
        .run(tvec!(Tensor::from_shape(dims, x).unwrap().into()))
        .unwrap();
    out[0]
        .to_plain_array_view::<f64>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn a_plain_conv_of_another_type_runs_on_tracts_own_conv() {
    // Our kernel is f32 only: a plain f64 Conv (with and without bias) must still run, on
    // tract's Conv, and give tract's own result.
    let x_dims: &[usize] = &[2, 3, 9, 8];
    let x: Vec<f64> = values(2 * 3 * 9 * 8, 0.1, 1.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    for bias in [true, false] {
        let mut weights: Vec<(&str, &[usize], Vec<f32>)> =
            vec![("w", &[4, 3, 3, 2], values(4 * 3 * 3 * 2, 0.2, 0.5))];
        if bias {
            weights.push(("b", &[4], values(4, 0.3, 0.5)));
        }
        let m = one_node_of(
            DataType::Double,
            "Conv",
            vec![ints("kernel_shape", &[3, 2])],
            &[("x", x_dims)],
            &weights,
            16,
        );
        let want = run_f64(&tract_onnx::onnx(), &m, &x, x_dims);
        let got = run_f64(&TractRunner::onnx(), &m, &x, x_dims);
        assert_eq!(got.len(), 2 * 4 * 7 * 7);
        assert_eq!(got, want, "bias {bias}");
    }
}

#[test]
fn grid_sample_matches_tracts_own_for_every_mode_padding_and_alignment() {
    let (x_dims, g_dims): (&[usize], &[usize]) = (&[2, 3, 5, 6], &[2, 4, 7, 2]);
    let x = values(2 * 3 * 5 * 6, 0.4, 1.0);
    // Points inside, on the borders and outside the image.
    let grid = values(2 * 4 * 7 * 2, 0.5, 1.3);
    for padding in ["zeros", "border", "reflection"] {
        for align in [0, 1] {
            // Every mode runs ours (opset 16's and 20's spellings), but for cubic with padding.
            for mode in ["linear", "bilinear", "nearest", "cubic", "bicubic"] {
                // ONNX's cubic pads the coordinate before its taps (PyTorch pads each tap):
                // with border or reflection padding tract's own op keeps ONNX's semantics.
                let ours = !(matches!(mode, "cubic" | "bicubic") && padding != "zeros");
                let opset = if matches!(mode, "bilinear" | "bicubic") {
                    16
                } else {
                    20
                };
                let attrs = vec![
                    string("mode", mode),
                    string("padding_mode", padding),
                    int("align_corners", align),
                ];
                let m = one_node(
                    "GridSample",
                    attrs,
                    &[("x", x_dims), ("grid", g_dims)],
                    &[],
                    opset,
                );
                check(
                    &m,
                    &[x.clone(), grid.clone()],
                    &[x_dims, g_dims],
                    "StnGridSample",
                    ours,
                );
            }
        }
    }
}
