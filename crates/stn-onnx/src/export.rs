//! The seed network as an ONNX graph, node for node (eval mode: dropout is the identity).

use std::str::FromStr;

use prost::Message;
use stn_model::{Arch, Params};
use stn_ops::AffineGrid;

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::OnnxError;

/// An output of the exported graph besides `log_probs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `[N, 10]` log-probabilities (always the first output).
    LogProbs,
    /// `[N, 2, 3]` the affine transforms of the STN.
    Theta,
    /// `[N, 1, 28, 28]` the images the STN samples for the classifier.
    Warped,
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log_probs" => Ok(Output::LogProbs),
            "theta" => Ok(Output::Theta),
            "warped" => Ok(Output::Warped),
            o => Err(format!(
                "unknown output '{o}': expected log_probs, theta or warped"
            )),
        }
    }
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::LogProbs => "log_probs",
            Output::Theta => "theta",
            Output::Warped => "warped",
        }
    }
}

/// How to export: the opset, the outputs and extra metadata.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// 16 (affine grid decomposed) or 20 (AffineGrid).
    pub opset: i64,
    /// Graph outputs, in order; `log_probs` is always first.
    pub outputs: Vec<Output>,
    /// Extra `metadata_props` (the training summary).
    pub metadata: Vec<(String, String)>,
}

/// Builds the graph's nodes and initializers.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(i),
        ..Default::default()
    }
}
fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn attr_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(s.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn tensor_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

impl Builder {
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        output.to_string()
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: vec![data.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Conv (stride 1, no padding) → MaxPool 2 → Relu, with the parameters `{prefix}.weight/bias`.
    fn conv_pool_relu(&mut self, x: &str, prefix: &str, k: i64, tag: &str) -> String {
        let c = self.node(
            "Conv",
            &[x, &format!("{prefix}.weight"), &format!("{prefix}.bias")],
            &format!("{tag}_conv"),
            vec![attr_ints("kernel_shape", &[k, k])],
        );
        let p = self.node(
            "MaxPool",
            &[&c],
            &format!("{tag}_pool"),
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        );
        self.node("Relu", &[&p], &format!("{tag}_relu"), vec![])
    }

    /// Gemm(x, W, b) with W stored [out, in] (PyTorch's Linear), `transB = 1`.
    fn linear(&mut self, x: &str, prefix: &str, out: &str) -> String {
        self.node(
            "Gemm",
            &[x, &format!("{prefix}.weight"), &format!("{prefix}.bias")],
            out,
            vec![attr_int("transB", 1)],
        )
    }
}

/// The seed network as an ONNX model.
pub fn export(params: &Params, opts: &ExportOptions) -> Result<ModelProto, OnnxError> {
    if opts.opset != 16 && opts.opset != 20 {
        return Err(OnnxError::Options(format!(
            "--opset {}: expected 16 or 20",
            opts.opset
        )));
    }
    let arch: Arch = params.seed_arch().ok_or_else(|| {
        OnnxError::Options(format!(
            "the exporter writes the tutorial's family of networks only (for now), not {}",
            params.net
        ))
    })?;
    let wants = |o: Output| opts.outputs.contains(&o);
    if !arch.stn && (wants(Output::Theta) || wants(Output::Warped)) {
        return Err(OnnxError::Options(
            "theta and warped are outputs of the STN; this model has none (--no-stn)".into(),
        ));
    }
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
    };
    for ((name, shape), data) in params.names.iter().zip(&params.shapes).zip(&params.data) {
        b.init_f32(name, shape, data);
    }
    let s = arch.canvas as i64;
    let classifier_in = if arch.stn {
        let r = b.conv_pool_relu("input", "localization.0", 7, "loc0");
        let r = b.conv_pool_relu(&r, "localization.3", 5, "loc3");
        let shape = b.init_i64("loc_flat_shape", &[-1, arch.fc_loc_in() as i64]);
        let xs = b.node("Reshape", &[&r, &shape], "loc_flat", vec![]);
        let h = b.linear(&xs, "fc_loc.0", "fc_loc_hidden");
        let h = b.node("Relu", &[&h], "fc_loc_relu", vec![]);
        let t6 = b.linear(&h, "fc_loc.2", "theta6");
        let shape = b.init_i64("theta_shape", &[-1, 2, 3]);
        let theta = b.node("Reshape", &[&t6, &shape], "theta", vec![]);
        let side = stn_model::SAMPLED;
        let grid = if opts.opset == 16 {
            // grid[n, i, j, :] = theta[n] · (x_j, y_i, 1): a constant base grid [H·W, 3] times
            // thetaᵀ [N, 3, 2], with PyTorch's coordinates (align_corners = false).
            let xs = AffineGrid::base::<f32>(side, false);
            let mut base = Vec::with_capacity(side * side * 3);
            for &y in &xs {
                for &x in &xs {
                    base.extend([x, y, 1.0]);
                }
            }
            let base = b.init_f32("affine_base_grid", &[side * side, 3], &base);
            let tt = b.node(
                "Transpose",
                &[&theta],
                "theta_t",
                vec![attr_ints("perm", &[0, 2, 1])],
            );
            let g = b.node("MatMul", &[&base, &tt], "grid_flat", vec![]);
            let shape = b.init_i64("grid_shape", &[-1, side as i64, side as i64, 2]);
            b.node("Reshape", &[&g, &shape], "grid", vec![])
        } else {
            // AffineGrid's size input: [N, 1, 28, 28], with N from the input's shape.
            let shp = b.node("Shape", &["input"], "input_shape", vec![]);
            let (st, en) = (
                b.init_i64("slice_start", &[0]),
                b.init_i64("slice_end", &[1]),
            );
            let n = b.node("Slice", &[&shp, &st, &en], "batch", vec![]);
            let rest = b.init_i64("sampled_chw", &[1, side as i64, side as i64]);
            let size = b.node(
                "Concat",
                &[&n, &rest],
                "grid_size",
                vec![attr_int("axis", 0)],
            );
            b.node(
                "AffineGrid",
                &[&theta, &size],
                "grid",
                vec![attr_int("align_corners", 0)],
            )
        };
        let mode = if opts.opset == 16 {
            "bilinear"
        } else {
            "linear"
        };
        b.node(
            "GridSample",
            &["input", &grid],
            "warped",
            vec![
                attr_str("mode", mode),
                attr_str("padding_mode", "zeros"),
                attr_int("align_corners", 0),
            ],
        )
    } else {
        "input".to_string()
    };
    let r = b.conv_pool_relu(&classifier_in, "conv1", 5, "c1");
    let r = b.conv_pool_relu(&r, "conv2", 5, "c2");
    let shape = b.init_i64("flat_shape", &[-1, arch.fc1_in() as i64]);
    let f = b.node("Reshape", &[&r, &shape], "flat", vec![]);
    let f = b.linear(&f, "fc1", "fc1_out");
    let f = b.node("Relu", &[&f], "fc1_relu", vec![]);
    let logits = b.linear(&f, "fc2", "logits");
    b.node(
        "LogSoftmax",
        &[&logits],
        "log_probs",
        vec![attr_int("axis", 1)],
    );

    let mut outputs = vec![tensor_info("log_probs", &[None, Some(10)])];
    for o in &opts.outputs {
        match o {
            Output::LogProbs => {}
            Output::Theta => outputs.push(tensor_info(o.name(), &[None, Some(2), Some(3)])),
            Output::Warped => {
                outputs.push(tensor_info(o.name(), &[None, Some(1), Some(28), Some(28)]))
            }
        }
    }
    let mut metadata: Vec<(String, String)> = vec![
        (
            "stn.normalize.mean".into(),
            stn_data::MNIST_MEAN.to_string(),
        ),
        ("stn.normalize.std".into(), stn_data::MNIST_STD.to_string()),
        (
            "stn.arch".into(),
            serde_json::to_string(&arch).expect("serialisable"),
        ),
    ];
    metadata.extend(opts.metadata.iter().cloned());
    let graph = GraphProto {
        node: b.nodes,
        name: Some("stn_seed_net".into()),
        initializer: b.inits,
        doc_string: Some(format!(
            "The seed spatial-transformer network of PyTorch's tutorial ({arch}): localisation net, \
             fc_loc, affine grid and GridSample, then the LeNet classifier and LogSoftmax. Input: \
             MNIST images normalised with (x/255 − {}) / {}.",
            stn_data::MNIST_MEAN,
            stn_data::MNIST_STD
        )),
        input: vec![tensor_info("input", &[None, Some(1), Some(s), Some(s)])],
        output: outputs,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(if opts.opset >= 20 { 9 } else { 8 }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opts.opset),
        }],
        producer_name: Some("stn-export".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some("Exported by stn (spatial transformers in Rust).".into()),
        graph: Some(graph),
        metadata_props: metadata
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k),
                value: Some(v),
            })
            .collect(),
        ..Default::default()
    })
}

/// The model's protobuf bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
