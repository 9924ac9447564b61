//! Any model spec's network as an ONNX graph, node for node from its plan (eval mode: dropout is
//! the identity); the seed's graph is the one it always was.

use std::str::FromStr;

use prost::Message;
use stn_model::{
    Layer, Padding, Params, Plan, PlannedLayer, SampleMode, Sampler, Shape, Transform,
};
use stn_ops::{AffineGrid, ProjectiveGrid};

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
    /// The transform head's parameters: `theta [N, 2, 3]` for affine, `transform [N, P]` for
    /// the other heads (the regressor's output).
    Theta,
    /// `[N, 1, 28, 28]` the images the STN samples for the classifier.
    Warped,
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log_probs" => Ok(Output::LogProbs),
            "theta" | "transform" => Ok(Output::Theta),
            "warped" => Ok(Output::Warped),
            o => Err(format!(
                "unknown output '{o}': expected log_probs, theta (or transform) or warped"
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

    /// The nodes of `layers` (eval mode: dropout is the identity) from value `x`; value names are
    /// `{tag}{i}_{op}`. Returns the last value.
    fn layers(&mut self, x: &str, layers: &[PlannedLayer], tag: &str) -> String {
        let mut x = x.to_string();
        for (i, l) in layers.iter().enumerate() {
            let name = |op: &str| format!("{tag}{i}_{op}");
            x = match l.layer {
                Layer::Conv2d {
                    kernel,
                    stride,
                    padding,
                    ..
                } => {
                    let (w, b) = l.params.as_ref().expect("a conv has parameters");
                    let k = kernel as i64;
                    let mut attrs = vec![attr_ints("kernel_shape", &[k, k])];
                    if stride != 1 {
                        attrs.push(attr_ints("strides", &[stride as i64; 2]));
                    }
                    if padding != 0 {
                        attrs.push(attr_ints("pads", &[padding as i64; 4]));
                    }
                    self.node("Conv", &[&x, w, b], &name("conv"), attrs)
                }
                Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride } => {
                    let (k, s) = (kernel as i64, stride.unwrap_or(kernel) as i64);
                    let (op, short) = match l.layer {
                        Layer::MaxPool2d { .. } => ("MaxPool", "pool"),
                        _ => ("AveragePool", "avgpool"),
                    };
                    self.node(
                        op,
                        &[&x],
                        &name(short),
                        vec![
                            attr_ints("kernel_shape", &[k, k]),
                            attr_ints("strides", &[s, s]),
                        ],
                    )
                }
                Layer::Relu => self.node("Relu", &[&x], &name("relu"), vec![]),
                Layer::Dropout { .. } | Layer::Dropout2d { .. } => continue,
                Layer::Flatten => match l.input {
                    Shape::Map { .. } => {
                        let shape = self.init_i64(&name("shape"), &[-1, l.output.len() as i64]);
                        self.node("Reshape", &[&x, &shape], &name("flat"), vec![])
                    }
                    Shape::Flat(_) => continue,
                },
                Layer::Linear { .. } => {
                    let (w, b) = l.params.as_ref().expect("a linear layer has parameters");
                    self.node(
                        "Gemm",
                        &[&x, w, b],
                        &name("gemm"),
                        vec![attr_int("transB", 1)],
                    )
                }
            };
        }
        x
    }
}

impl Builder {
    /// The affine grid of theta `[N, 2, 3]`: opset 16 decomposed (a constant base grid `[H·W, 3]`
    /// times thetaᵀ, with PyTorch's coordinates), opset 20 `AffineGrid`.
    fn affine_grid(&mut self, theta: &str, smp: Sampler, opset: i64, c: usize) -> String {
        let [ho, wo] = smp.output;
        if opset == 16 {
            let base = self.base_grid(smp, true);
            let tt = self.node(
                "Transpose",
                &[theta],
                "theta_t",
                vec![attr_ints("perm", &[0, 2, 1])],
            );
            let g = self.node("MatMul", &[&base, &tt], "grid_flat", vec![]);
            let shape = self.init_i64("grid_shape", &[-1, ho as i64, wo as i64, 2]);
            return self.node("Reshape", &[&g, &shape], "grid", vec![]);
        }
        // AffineGrid's size input: [N, C, Ho, Wo], with N from the input's shape.
        let shp = self.node("Shape", &["input"], "input_shape", vec![]);
        let (st, en) = (
            self.init_i64("slice_start", &[0]),
            self.init_i64("slice_end", &[1]),
        );
        let n = self.node("Slice", &[&shp, &st, &en], "batch", vec![]);
        let rest = self.init_i64("sampled_chw", &[c as i64, ho as i64, wo as i64]);
        let size = self.node(
            "Concat",
            &[&n, &rest],
            "grid_size",
            vec![attr_int("axis", 0)],
        );
        self.node(
            "AffineGrid",
            &[theta, &size],
            "grid",
            vec![attr_int("align_corners", smp.align_corners as i64)],
        )
    }

    /// affine_grid's base points of the sampler's grid, `[H·W, 3]` as `(x, y, 1)` (or `[H·W, 2]`
    /// without the ones).
    fn base_grid(&mut self, smp: Sampler, ones: bool) -> String {
        let [ho, wo] = smp.output;
        let (xs, ys) = (
            AffineGrid::base::<f32>(wo, smp.align_corners),
            AffineGrid::base::<f32>(ho, smp.align_corners),
        );
        let mut base = Vec::with_capacity(ho * wo * 3);
        for &y in &ys {
            for &x in &xs {
                base.extend([x, y]);
                if ones {
                    base.push(1.0);
                }
            }
        }
        let cols = 2 + ones as usize;
        let name = if ones {
            "affine_base_grid"
        } else {
            "projective_base_xy"
        };
        self.init_f32(name, &[ho * wo, cols], &base)
    }

    /// `x[:, from..to]` of a `[N, P]` value.
    fn slice_cols(&mut self, x: &str, from: i64, to: i64, out: &str) -> String {
        let (s, e, a) = (
            self.init_i64(&format!("{out}_start"), &[from]),
            self.init_i64(&format!("{out}_end"), &[to]),
            self.init_i64(&format!("{out}_axes"), &[1]),
        );
        self.node("Slice", &[x, &s, &e, &a], out, vec![])
    }

    /// The head's grid `[N, Ho, Wo, 2]` from its parameters `p [N, P]` (the regressor's output),
    /// from standard ONNX operators only; the graph's `theta` (affine) or `transform` value holds
    /// the parameters.
    fn grid(&mut self, p: &str, t: Transform, plan: &Plan, opset: i64, c: usize) -> String {
        let smp = t.sampler().expect("a transformer samples");
        let [ho, wo] = smp.output;
        match t {
            Transform::Affine(_) => {
                let shape = self.init_i64("theta_shape", &[-1, 2, 3]);
                let theta = self.node("Reshape", &[p, &shape], "theta", vec![]);
                self.affine_grid(&theta, smp, opset, c)
            }
            Transform::Attention(_) | Transform::Similarity(_) => {
                let params = self.node("Identity", &[p], "transform", vec![]);
                let rows = t.theta_basis().expect("a constrained affine head");
                let flat: Vec<f32> = rows.iter().flatten().copied().collect();
                let basis = self.init_f32("theta_basis", &[rows.len(), 6], &flat);
                let t6 = self.node("MatMul", &[&params, &basis], "theta_flat", vec![]);
                let shape = self.init_i64("theta_shape", &[-1, 2, 3]);
                let theta = self.node("Reshape", &[&t6, &shape], "theta", vec![]);
                self.affine_grid(&theta, smp, opset, c)
            }
            Transform::Projective(_) => {
                // (u, v) = the first two rows times (x, y, 1), as an affine grid's; w = (h6, h7)·(x,
                // y) + 1, |w| clamped from below (stn_ops::ProjectiveGrid::MIN_W, sign kept, + at 0).
                let params = self.node("Identity", &[p], "transform", vec![]);
                let top = self.slice_cols(&params, 0, 6, "homography_top");
                let shape = self.init_i64("homography_top_shape", &[-1, 2, 3]);
                let top = self.node("Reshape", &[&top, &shape], "homography_uv", vec![]);
                let tt = self.node(
                    "Transpose",
                    &[&top],
                    "homography_uv_t",
                    vec![attr_ints("perm", &[0, 2, 1])],
                );
                let base = self.base_grid(smp, true);
                let uv = self.node("MatMul", &[&base, &tt], "grid_uv", vec![]);
                let hw = self.slice_cols(&params, 6, 8, "homography_w");
                let shape = self.init_i64("homography_w_shape", &[-1, 2, 1]);
                let hw = self.node("Reshape", &[&hw, &shape], "homography_w_col", vec![]);
                let xy = self.base_grid(smp, false);
                let w0 = self.node("MatMul", &[&xy, &hw], "grid_w_linear", vec![]);
                let one = self.init_f32("one", &[], &[1.0]);
                let w = self.node("Add", &[&w0, &one], "grid_w", vec![]);
                let min = ProjectiveGrid::MIN_W as f32;
                let (zero, min_c, neg_c) = (
                    self.init_f32("zero", &[], &[0.0]),
                    self.init_f32("min_w", &[], &[min]),
                    self.init_f32("neg_min_w", &[], &[-min]),
                );
                let abs = self.node("Abs", &[&w], "grid_w_abs", vec![]);
                let small = self.node("Less", &[&abs, &min_c], "grid_w_small", vec![]);
                let neg = self.node("Less", &[&w, &zero], "grid_w_negative", vec![]);
                let clamp = self.node("Where", &[&neg, &neg_c, &min_c], "grid_w_clamp", vec![]);
                let wc = self.node("Where", &[&small, &clamp, &w], "grid_w_clamped", vec![]);
                let g = self.node("Div", &[&uv, &wc], "grid_flat", vec![]);
                let shape = self.init_i64("grid_shape", &[-1, ho as i64, wo as i64, 2]);
                self.node("Reshape", &[&g, &shape], "grid", vec![])
            }
            Transform::Tps(h) => {
                // grid = M · points, M [Ho·Wo, K] the spline's constant matrix (solved in f64).
                let params = self.node("Identity", &[p], "transform", vec![]);
                let k = h.grid * h.grid;
                let shape = self.init_i64("tps_points_shape", &[-1, k as i64, 2]);
                let pts = self.node("Reshape", &[&params, &shape], "tps_points", vec![]);
                let m: Vec<f32> = plan
                    .tps_matrix()
                    .expect("a tps plan has its matrix")
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let m = self.init_f32("tps_matrix", &[ho * wo, k], &m);
                let g = self.node("MatMul", &[&m, &pts], "grid_flat", vec![]);
                let shape = self.init_i64("grid_shape", &[-1, ho as i64, wo as i64, 2]);
                self.node("Reshape", &[&g, &shape], "grid", vec![])
            }
            Transform::None => unreachable!("a transformer"),
        }
    }
}

/// GridSample's `padding_mode`.
fn padding_name(p: Padding) -> &'static str {
    match p {
        Padding::Zeros => "zeros",
        Padding::Border => "border",
        Padding::Reflection => "reflection",
    }
}

/// A per-channel list as metadata: one number, or numbers joined by commas.
fn list(v: &[f32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The network of `params` (any model spec) as an ONNX model: the localisation net, the
/// regressor, the affine grid (decomposed at opset 16, `AffineGrid` at 20) and GridSample, the
/// classifier and LogSoftmax, node for node from the spec's plan; the spec in `stn.spec`.
pub fn export(params: &Params, opts: &ExportOptions) -> Result<ModelProto, OnnxError> {
    if opts.opset != 16 && opts.opset != 20 {
        return Err(OnnxError::Options(format!(
            "--opset {}: expected 16 or 20",
            opts.opset
        )));
    }
    let net = &params.net;
    let plan = net.plan();
    let seed = net.seed_arch();
    let wants = |o: Output| opts.outputs.contains(&o);
    if !plan.transform.is_some() && (wants(Output::Theta) || wants(Output::Warped)) {
        return Err(OnnxError::Options(
            "theta and warped are outputs of the STN; this model has none (--no-stn)".into(),
        ));
    }
    if let Some(smp) = plan.transform.sampler() {
        if smp.mode == SampleMode::Bicubic && smp.padding != Padding::Zeros {
            return Err(OnnxError::Options(format!(
                "bicubic sampling with {} padding has no ONNX form: ONNX's GridSample pads the \
                 coordinate before the cubic taps, PyTorch (and stn) pads each tap, so every ONNX \
                 runtime would sample other images. Train with padding zeros, or mode bilinear",
                padding_name(smp.padding)
            )));
        }
    }
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
    };
    for ((name, shape), data) in params.names.iter().zip(&params.shapes).zip(&params.data) {
        b.init_f32(name, shape, data);
    }
    let [c, h, w] = net.input_dims();
    let classifier_in = match plan.transform {
        Transform::None => "input".to_string(),
        t => {
            let smp = t.sampler().expect("a transformer samples");
            let p = b.layers("input", &plan.localization, "loc");
            let grid = b.grid(&p, t, plan, opts.opset, c);
            let align = smp.align_corners as i64;
            let mode = if opts.opset >= 20 {
                smp.mode.op().onnx20_name()
            } else {
                smp.mode.op().name()
            };
            let padding = padding_name(smp.padding);
            b.node(
                "GridSample",
                &["input", &grid],
                "warped",
                vec![
                    attr_str("mode", mode),
                    attr_str("padding_mode", padding),
                    attr_int("align_corners", align),
                ],
            )
        }
    };
    let logits = b.layers(&classifier_in, &plan.classifier, "cls");
    b.node(
        "LogSoftmax",
        &[&logits],
        "log_probs",
        vec![attr_int("axis", 1)],
    );

    let mut outputs = vec![tensor_info("log_probs", &[None, Some(plan.classes as i64)])];
    for o in &opts.outputs {
        match o {
            Output::LogProbs => {}
            Output::Theta => outputs.push(match plan.transform {
                Transform::Affine(_) => tensor_info("theta", &[None, Some(2), Some(3)]),
                t => tensor_info("transform", &[None, Some(t.n_params() as i64)]),
            }),
            Output::Warped => {
                let [ho, wo] = plan.transform.output().expect("checked above");
                outputs.push(tensor_info(
                    o.name(),
                    &[None, Some(c as i64), Some(ho as i64), Some(wo as i64)],
                ))
            }
        }
    }
    let (mean, std) = net.spec().normalization().ok_or_else(|| {
        OnnxError::Options("the model spec has no normalisation (mean and std)".into())
    })?;
    let mut metadata: Vec<(String, String)> = vec![
        ("stn.normalize.mean".into(), list(mean)),
        ("stn.normalize.std".into(), list(std)),
    ];
    if let Some(arch) = seed {
        metadata.push((
            "stn.arch".into(),
            serde_json::to_string(&arch).expect("serialisable"),
        ));
    }
    metadata.push((
        "stn.spec".into(),
        serde_json::to_string(net.spec()).expect("serialisable"),
    ));
    metadata.extend(opts.metadata.iter().cloned());
    let doc = match seed {
        Some(arch) => format!(
            "The seed spatial-transformer network of PyTorch's tutorial ({arch}): localisation net, \
             fc_loc, affine grid and GridSample, then the LeNet classifier and LogSoftmax. Input: \
             MNIST images normalised with (x/255 − {}) / {}.",
            list(mean),
            list(std)
        ),
        None => format!(
            "A spatial-transformer network made by stn from its model spec (metadata stn.spec): \
             {net}. Input: images normalised per channel with (x/255 − mean) / std, mean {}, std {}.",
            list(mean),
            list(std)
        ),
    };
    let graph = GraphProto {
        node: b.nodes,
        name: Some(
            if seed.is_some() {
                "stn_seed_net"
            } else {
                "stn_net"
            }
            .into(),
        ),
        initializer: b.inits,
        doc_string: Some(doc),
        input: vec![tensor_info(
            "input",
            &[None, Some(c as i64), Some(h as i64), Some(w as i64)],
        )],
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
