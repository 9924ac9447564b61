//! Checks, node by node, that an ONNX graph computes the network of its model spec — ours (opset
//! 16's decomposed affine grid or opset 20's `AffineGrid`) or PyTorch's export of the seed's `Net`
//! — before any runtime is given it.
//!
//! Why: the dfdx and fused runners compute the seed network from the file's initializers; run on a
//! graph that computes something else (a removed node, another stride, an unknown op), they would
//! print a confident accuracy for a model that is not in the file. Every runner goes through this
//! check, so every runtime gives the same verdict on the same file.
//!
//! How: the graph is evaluated symbolically in topological order. Each value is the image input, an
//! initializer, a small integer tensor (shapes, axes: constant-folded, with the batch dimension as a
//! symbol), or an expression of layers over the input ([`Expr`]). Each operator checks its
//! attributes against the seed's (a stride, a padding, a mode that differs is an error naming the
//! node) and builds its expression; the graph's outputs must then equal the expressions that
//! [`expected`] builds from the spec's plan, parameter names included.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use stn_model::{Layer, Network, Padding, Plan, Sampler, Shape, Transform};
use stn_ops::AffineGrid;

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, NodeProto, TensorProto,
};

/// A tensor computed from the image input, as the seed network's layers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Input,
    /// Conv with `{1}.weight` and `{1}.bias`, stride `{2}`, padding `{3}` on every side.
    Conv(Rc<Expr>, String, i64, i64),
    /// MaxPool, kernel `{1}`×`{1}`, stride `{2}`.
    Pool(Rc<Expr>, i64, i64),
    /// AveragePool, kernel `{1}`×`{1}`, stride `{2}`, no padding.
    AvgPool(Rc<Expr>, i64, i64),
    Relu(Rc<Expr>),
    /// Reshape to these dimensions (-1 for the batch).
    Reshape(Rc<Expr>, Vec<i64>),
    /// Gemm with `{0}.weight` as `[out, in]` (transB = 1) and `{0}.bias`.
    Gemm(Rc<Expr>, String),
    /// Transpose with perm [0, 2, 1].
    Transpose021(Rc<Expr>),
    /// MatMul by the constant base grid of the spec's affine grid.
    BaseGridMatMul(Rc<Expr>),
    /// AffineGrid of theta, of the spec's size and align_corners.
    AffineGrid(Rc<Expr>),
    /// GridSample of the input on this grid, with the spec's mode, padding and align_corners.
    GridSample(Rc<Expr>),
    LogSoftmax(Rc<Expr>),
    /// A float constant as an operand of a [`Expr::Node`]: its dimensions and bits.
    Const(Vec<i64>, Rc<Vec<u32>>),
    /// Another standard operator of a transform head's grid (MatMul, Slice, Add, Abs, Less,
    /// Where, Div), its attributes and constant int inputs written into the name.
    Node(String, Vec<Rc<Expr>>),
}

/// A constant operand as the exporter writes it.
fn konst(dims: &[usize], v: &[f32]) -> Rc<Expr> {
    Rc::new(Expr::Const(
        dims.iter().map(|&d| d as i64).collect(),
        Rc::new(v.iter().map(|x| x.to_bits()).collect()),
    ))
}

fn node(op: &str, args: Vec<Rc<Expr>>) -> Rc<Expr> {
    Rc::new(Expr::Node(op.into(), args))
}

/// The name of a Slice of columns `from..to` (axis 1).
fn slice_name(from: i64, to: i64, axis: i64) -> String {
    format!("Slice[{from}..{to} on axis {axis}]")
}

/// The head's grid from its parameters `t` (the regressor's output), as `stn-export` writes it,
/// and the parameters' output (`theta` or `transform`).
fn head_grid(plan: &Plan, t: Expr) -> (Expr, Expr) {
    let r = Rc::new;
    let tr = plan.transform;
    let smp = tr.sampler().expect("a transformer samples");
    let [ho, wo] = smp.output;
    let grid_shape = vec![-1, ho as i64, wo as i64, 2];
    match tr {
        Transform::Affine(_) => {
            let theta = Expr::Reshape(r(t), vec![-1, 2, 3]);
            (Expr::AffineGrid(r(theta.clone())), theta)
        }
        Transform::Attention(_) | Transform::Similarity(_) => {
            let rows = tr.theta_basis().expect("a constrained affine head");
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let t6 = node("MatMul", vec![r(t.clone()), konst(&[rows.len(), 6], &flat)]);
            let theta = Expr::Reshape(t6, vec![-1, 2, 3]);
            (Expr::AffineGrid(r(theta)), t)
        }
        Transform::Projective(_) => {
            let p = r(t.clone());
            let top = Expr::Reshape(node(&slice_name(0, 6, 1), vec![p.clone()]), vec![-1, 2, 3]);
            let uv = r(Expr::BaseGridMatMul(r(Expr::Transpose021(r(top)))));
            let hw = Expr::Reshape(node(&slice_name(6, 8, 1), vec![p]), vec![-1, 2, 1]);
            let (xs, ys) = (
                AffineGrid::base::<f32>(wo, smp.align_corners),
                AffineGrid::base::<f32>(ho, smp.align_corners),
            );
            let xy: Vec<f32> = ys
                .iter()
                .flat_map(|&y| xs.iter().flat_map(move |&x| [x, y]))
                .collect();
            let w0 = node("MatMul", vec![konst(&[ho * wo, 2], &xy), r(hw)]);
            let w = node("Add", vec![w0, konst(&[], &[1.0])]);
            let min = stn_ops::ProjectiveGrid::MIN_W as f32;
            let small = node(
                "Less",
                vec![node("Abs", vec![w.clone()]), konst(&[], &[min])],
            );
            let neg = node("Less", vec![w.clone(), konst(&[], &[0.0])]);
            let clamp = node("Where", vec![neg, konst(&[], &[-min]), konst(&[], &[min])]);
            let wc = node("Where", vec![small, clamp, w]);
            let g = node("Div", vec![uv, wc]);
            (Expr::Reshape(g, grid_shape), t)
        }
        Transform::Tps(h) => {
            let k = h.grid * h.grid;
            let pts = Expr::Reshape(r(t.clone()), vec![-1, k as i64, 2]);
            let m: Vec<f32> = plan
                .tps_matrix()
                .expect("a tps plan has its matrix")
                .iter()
                .map(|&v| v as f32)
                .collect();
            let g = node("MatMul", vec![konst(&[ho * wo, k], &m), r(pts)]);
            (Expr::Reshape(g, grid_shape), t)
        }
        Transform::None => unreachable!("a transformer"),
    }
}

/// The network's outputs as expressions: `(log_probs, theta, warped)`; theta and warped are
/// `None` without a transformer.
pub(crate) fn expected(plan: &Plan) -> (Expr, Option<Expr>, Option<Expr>) {
    let r = Rc::new;
    let layers = |mut x: Expr, layers: &[stn_model::PlannedLayer]| {
        for l in layers {
            let prefix = || {
                let (w, _) = l.params.as_ref().expect("conv and linear have parameters");
                w.strip_suffix(".weight").unwrap_or(w).to_string()
            };
            x = match l.layer {
                Layer::Conv2d {
                    stride, padding, ..
                } => Expr::Conv(r(x), prefix(), stride as i64, padding as i64),
                Layer::MaxPool2d { kernel, stride } => {
                    Expr::Pool(r(x), kernel as i64, stride.unwrap_or(kernel) as i64)
                }
                Layer::AvgPool2d { kernel, stride } => {
                    Expr::AvgPool(r(x), kernel as i64, stride.unwrap_or(kernel) as i64)
                }
                Layer::Relu => Expr::Relu(r(x)),
                Layer::Dropout { .. } | Layer::Dropout2d { .. } => x,
                Layer::Flatten => match l.input {
                    Shape::Map { .. } => Expr::Reshape(r(x), vec![-1, l.output.len() as i64]),
                    Shape::Flat(_) => x,
                },
                Layer::Linear { .. } => Expr::Gemm(r(x), prefix()),
            };
        }
        x
    };
    let (classifier_in, theta, warped) = if plan.transform.is_some() {
        let t = layers(Expr::Input, &plan.localization);
        let (grid, theta) = head_grid(plan, t);
        let warped = Expr::GridSample(r(grid));
        (warped.clone(), Some(theta), Some(warped))
    } else {
        (Expr::Input, None, None)
    };
    let lp = Expr::LogSoftmax(r(layers(classifier_in, &plan.classifier)));
    (lp, theta, warped)
}

/// What the spec fixes that single operators are checked against: the input's `[C, H, W]` and
/// the transform's sampler.
struct Want {
    dims: [i64; 3],
    transform: Transform,
}

/// A dimension of a constant-folded shape: the symbolic batch, or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dim {
    Batch,
    Known(i64),
}

/// What a value of the graph is.
#[derive(Debug, Clone)]
enum Val {
    Expr(Rc<Expr>),
    /// A float constant (initializer or Constant node), by the name of its tensor.
    Floats(String),
    /// A small int64 tensor: a scalar (`scalar`) or 1-D.
    Ints {
        v: Vec<Dim>,
        scalar: bool,
    },
}

/// The check's verdict: the graph's output names (log-probs first), or an error naming the node
/// (or input, output) that differs.
pub(crate) fn verify(
    graph: &crate::proto::GraphProto,
    net: &Network,
    input_name: &str,
    opset: i64,
) -> Result<Vec<String>, String> {
    let who = if net.seed_arch().is_some() {
        "the seed network".to_string()
    } else {
        format!("its spec's network ({net})")
    };
    let mut floats: HashMap<String, &TensorProto> = HashMap::new();
    let mut vals: HashMap<String, Val> = HashMap::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        if floats.contains_key(&name) || vals.contains_key(&name) {
            return Err(format!("initializer {name:?} is defined twice"));
        }
        match t.data_type {
            Some(d) if d == DataType::Float as i32 => {
                floats.insert(name.clone(), t);
                vals.insert(name.clone(), Val::Floats(name));
            }
            Some(d) if d == DataType::Int64 as i32 => {
                vals.insert(name.clone(), ints_of(t).map_err(|e| format!("initializer {name}: {e}"))?);
            }
            d => return Err(format!("initializer {name}: data type {d:?} (the seed network has FLOAT and INT64 tensors)")),
        }
    }
    if vals.contains_key(input_name) {
        return Err(format!("input {input_name} is also an initializer"));
    }
    vals.insert(input_name.into(), Val::Expr(Rc::new(Expr::Input)));
    let [c, h, w] = net.input_dims();
    let want = Want {
        dims: [c as i64, h as i64, w as i64],
        transform: net.plan().transform,
    };

    // Topological order (Kahn): a node runs once all its inputs exist. Nodes left over are in a
    // cycle or read a value nothing produces.
    let mut done = vec![false; graph.node.len()];
    let mut produced: HashSet<String> = vals.keys().cloned().collect();
    let mut constants: Vec<TensorProto> = Vec::new();
    loop {
        let mut progressed = false;
        for (i, node) in graph.node.iter().enumerate() {
            if done[i]
                || !node
                    .input
                    .iter()
                    .all(|x| x.is_empty() || produced.contains(x))
            {
                continue;
            }
            done[i] = true;
            progressed = true;
            let label = node_label(node, i);
            let outs = eval(node, &vals, &floats, &mut constants, &want, opset)
                .map_err(|e| format!("{label}: {e}"))?;
            if outs.len() > node.output.len() {
                return Err(format!(
                    "{label}: has {} outputs, expected {}",
                    node.output.len(),
                    outs.len()
                ));
            }
            for (k, name) in node.output.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                if !produced.insert(name.clone()) {
                    return Err(format!("{label}: output {name:?} is already defined (an ONNX value is assigned once)"));
                }
                // Outputs past the ones the seed uses (MaxPool's Indices, Dropout's mask) are
                // values nothing may read.
                if let Some(v) = outs.get(k) {
                    vals.insert(name.clone(), v.clone());
                }
            }
        }
        if !progressed {
            break;
        }
    }
    if let Some(i) = done.iter().position(|d| !d) {
        let node = &graph.node[i];
        let missing: Vec<&String> = node
            .input
            .iter()
            .filter(|x| !x.is_empty() && !produced.contains(*x))
            .collect();
        return Err(format!(
            "{}: input {:?} is never computed (no node or initializer makes it, or the graph has a cycle)",
            node_label(node, i),
            missing.first().map(|s| s.as_str()).unwrap_or("")
        ));
    }

    let (lp, theta, warped) = expected(net.plan());
    let mut outputs = Vec::new();
    for (k, o) in graph.output.iter().enumerate() {
        let name = o.name.clone().unwrap_or_default();
        let v = match vals.get(&name) {
            Some(Val::Expr(e)) => e.as_ref().clone(),
            Some(_) => {
                return Err(format!(
                    "output {name}: a constant, not a result of the network"
                ))
            }
            None => return Err(format!("output {name}: no node computes it")),
        };
        let want = if k == 0 {
            Some(("log-probs", &lp))
        } else {
            match name.as_str() {
                n if n == net.plan().transform.output_name() => {
                    theta.as_ref().map(|t| ("transform parameters", t))
                }
                "warped" => warped.as_ref().map(|w| ("warped", w)),
                _ => None,
            }
        };
        match want {
            Some((_, e)) if *e == v => {}
            Some((what, e)) => {
                return Err(format!(
                    "output {name} (the {what}) is not computed as {who} computes it: {}",
                    describe_difference(e, &v)
                ))
            }
            None => {
                return Err(format!(
                    "output {name}: {who}'s outputs are log-probs first, then `{}` and `warped`{}",
                    net.plan().transform.output_name(),
                    if net.plan().transform.is_some() {
                        ""
                    } else {
                        " (which a model without STN has not)"
                    }
                ))
            }
        }
        outputs.push(name);
    }
    if outputs.is_empty() {
        return Err("the graph has no output".into());
    }
    Ok(outputs)
}

fn node_label(node: &NodeProto, i: usize) -> String {
    format!(
        "node {} ({})",
        node.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{i}")),
        node.op_type.as_deref().unwrap_or("?")
    )
}

/// The first place where two expressions part, in words.
fn describe_difference(want: &Expr, got: &Expr) -> String {
    fn head(e: &Expr) -> String {
        match e {
            Expr::Input => "the input".into(),
            Expr::Conv(_, p, s, pad) => format!("Conv with {p}.weight, strides {s}, pads {pad}"),
            Expr::Pool(_, k, s) => format!("MaxPool {k}×{k} strides {s}"),
            Expr::AvgPool(_, k, s) => format!("AveragePool {k}×{k} strides {s}"),
            Expr::Relu(_) => "Relu".into(),
            Expr::Reshape(_, s) => format!("Reshape to {s:?}"),
            Expr::Gemm(_, p) => format!("Gemm with {p}.weight"),
            Expr::Transpose021(_) => "Transpose [0, 2, 1]".into(),
            Expr::BaseGridMatMul(_) => "MatMul by the base grid".into(),
            Expr::AffineGrid(_) => "AffineGrid".into(),
            Expr::GridSample(_) => "GridSample".into(),
            Expr::LogSoftmax(_) => "LogSoftmax".into(),
            Expr::Const(d, _) => format!("a constant of dimensions {d:?}"),
            Expr::Node(op, _) => op.clone(),
        }
    }
    fn inner(e: &Expr) -> Option<&Expr> {
        match e {
            Expr::Input => None,
            Expr::Conv(x, ..)
            | Expr::Pool(x, ..)
            | Expr::AvgPool(x, ..)
            | Expr::Relu(x)
            | Expr::Reshape(x, _)
            | Expr::Gemm(x, _)
            | Expr::Transpose021(x)
            | Expr::BaseGridMatMul(x)
            | Expr::AffineGrid(x)
            | Expr::GridSample(x)
            | Expr::LogSoftmax(x) => Some(x),
            Expr::Const(..) => None,
            Expr::Node(_, args) => args
                .iter()
                .find(|a| !matches!(a.as_ref(), Expr::Const(..)))
                .map(|a| a.as_ref()),
        }
    }
    // Walk from the input side: the chains are listed outermost first.
    let chain = |mut e: &Expr| {
        let mut v = vec![e.clone()];
        while let Some(x) = inner(e) {
            v.push(x.clone());
            e = x;
        }
        v.reverse();
        v
    };
    let (w, g) = (chain(want), chain(got));
    for (k, (a, b)) in w.iter().zip(&g).enumerate() {
        if head(a) != head(b) {
            return format!("layer {} is {}, expected {}", k, head(b), head(a));
        }
    }
    if w.len() != g.len() {
        return format!("{} layers, expected {}", g.len(), w.len());
    }
    "the layers differ".into()
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a crate::proto::AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> Result<i64, String> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) if a.r#type == Some(AttributeType::Int as i32) => Ok(a.i.unwrap_or(0)),
        Some(a) => Err(format!(
            "attribute {name} has type {:?}, expected INT",
            a.r#type
        )),
    }
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> Result<f32, String> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) if a.r#type == Some(AttributeType::Float as i32) => Ok(a.f.unwrap_or(0.0)),
        Some(a) => Err(format!(
            "attribute {name} has type {:?}, expected FLOAT",
            a.r#type
        )),
    }
}

fn attr_ints(node: &NodeProto, name: &str) -> Result<Option<Vec<i64>>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(AttributeType::Ints as i32) => Ok(Some(a.ints.clone())),
        Some(a) => Err(format!(
            "attribute {name} has type {:?}, expected INTS",
            a.r#type
        )),
    }
}

fn attr_s(node: &NodeProto, name: &str) -> Result<Option<String>, String> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(AttributeType::String as i32) => Ok(Some(
            String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into_owned(),
        )),
        Some(a) => Err(format!(
            "attribute {name} has type {:?}, expected STRING",
            a.r#type
        )),
    }
}

/// Attribute `name` is absent or one of `allowed`.
fn want_ints(node: &NodeProto, name: &str, allowed: &[&[i64]]) -> Result<(), String> {
    match attr_ints(node, name)? {
        Some(v) if !allowed.contains(&v.as_slice()) => Err(format!(
            "{name} = {v:?}; the seed network has {:?}",
            allowed[0]
        )),
        _ => Ok(()),
    }
}

/// An attribute of `n` equal values (`strides [s, s]`, `pads [p, p, p, p]`) as the one value.
fn square(node: &NodeProto, name: &str, n: usize) -> Result<Option<i64>, String> {
    match attr_ints(node, name)? {
        None => Ok(None),
        Some(v) if v.len() == n && v.iter().all(|&x| x == v[0]) && v[0] >= 0 => Ok(Some(v[0])),
        Some(v) => Err(format!(
            "{name} {v:?}; stn's layers have {n} equal non-negative values"
        )),
    }
}

fn want_int(node: &NodeProto, name: &str, default: i64, allowed: &[i64]) -> Result<(), String> {
    let v = attr_i(node, name, default)?;
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} = {v}; the seed network has {}", allowed[0]))
    }
}

/// Only these attributes may be present (another would change what the node computes, or is
/// not ONNX).
fn only_attrs(node: &NodeProto, known: &[&str]) -> Result<(), String> {
    for a in &node.attribute {
        let n = a.name.as_deref().unwrap_or("");
        if !known.contains(&n) {
            return Err(format!(
                "attribute {n:?} is not one the seed network's {} has",
                node.op_type.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(())
}

fn ints_of(t: &TensorProto) -> Result<Val, String> {
    if t.data_type != Some(DataType::Int64 as i32) {
        return Err(format!("data type {:?}, expected INT64", t.data_type));
    }
    let v: Vec<i64> = match &t.raw_data {
        Some(raw) if !raw.is_empty() => {
            if raw.len() % 8 != 0 {
                return Err(format!("{} raw bytes for int64 values", raw.len()));
            }
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        }
        _ => t.int64_data.clone(),
    };
    let scalar = t.dims.is_empty();
    let want = if scalar {
        Some(1)
    } else if t.dims.len() == 1 {
        usize::try_from(t.dims[0]).ok()
    } else {
        None
    };
    if want != Some(v.len()) || v.len() > 16 {
        return Err(format!("an int64 tensor of dimensions {:?} with {} values (the seed network's are short vectors)", t.dims, v.len()));
    }
    Ok(Val::Ints {
        v: v.into_iter().map(Dim::Known).collect(),
        scalar,
    })
}

fn floats_of(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != Some(DataType::Float as i32) {
        return None;
    }
    match &t.raw_data {
        Some(raw) if !raw.is_empty() => (raw.len() % 4 == 0).then(|| {
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        }),
        _ => Some(t.float_data.clone()),
    }
}

/// One node's output values.
fn eval(
    node: &NodeProto,
    vals: &HashMap<String, Val>,
    floats: &HashMap<String, &TensorProto>,
    constants: &mut Vec<TensorProto>,
    want: &Want,
    opset: i64,
) -> Result<Vec<Val>, String> {
    let op = node.op_type.as_deref().unwrap_or("");
    if !matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
        return Err(format!(
            "domain {:?}: not the standard ONNX domain",
            node.domain.as_deref().unwrap_or("")
        ));
    }
    let get = |k: usize| -> Result<&Val, String> {
        let name = node
            .input
            .get(k)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("input {k} is missing"))?;
        vals.get(name)
            .ok_or_else(|| format!("input {name:?} is an output that the seed network does not read (an Indices or mask output)"))
    };
    let n_inputs = |lo: usize, hi: usize| -> Result<(), String> {
        let n = node.input.len();
        if n < lo || n > hi {
            Err(format!(
                "{n} inputs, expected {}",
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} to {hi}")
                }
            ))
        } else {
            Ok(())
        }
    };
    let expr = |k: usize| -> Result<Rc<Expr>, String> {
        match get(k)? {
            Val::Expr(e) => Ok(e.clone()),
            _ => Err(format!(
                "input {k} ({}) is a constant where the seed network has a computed tensor",
                node.input[k]
            )),
        }
    };
    let ints = |k: usize| -> Result<(Vec<Dim>, bool), String> {
        match get(k)? {
            Val::Ints { v, scalar } => Ok((v.clone(), *scalar)),
            _ => Err(format!(
                "input {k} ({}) is not a constant int64 tensor",
                node.input[k]
            )),
        }
    };
    // `{prefix}.weight` and `{prefix}.bias` initializers as inputs 1 and 2.
    let weight_bias = || -> Result<String, String> {
        n_inputs(3, 3)?;
        let (w, b) = (&node.input[1], &node.input[2]);
        let prefix = w
            .strip_suffix(".weight")
            .filter(|p| {
                floats.contains_key(w) && *b == format!("{p}.bias") && floats.contains_key(b)
            })
            .ok_or_else(|| {
                format!("weights {w:?} and {b:?} are not a parameter pair of the seed network")
            })?;
        Ok(prefix.to_string())
    };
    let one = |e: Expr| Ok(vec![Val::Expr(Rc::new(e))]);
    let constant = |name: &String| -> Result<&TensorProto, String> {
        floats
            .get(name)
            .copied()
            .or_else(|| constants.iter().find(|c| c.name.as_ref() == Some(name)))
            .ok_or_else(|| format!("{name}: no such tensor"))
    };
    // An operator of a head's grid: its operands computed values or float constants (by value).
    let generic = |name: String, arity: usize| -> Result<Vec<Val>, String> {
        n_inputs(arity, arity)?;
        let mut args = Vec::new();
        for k in 0..arity {
            args.push(match get(k)? {
                Val::Expr(e) => e.clone(),
                Val::Floats(n) => {
                    let t = constant(n)?;
                    let v = floats_of(t).ok_or_else(|| format!("{n}: unreadable float data"))?;
                    Rc::new(Expr::Const(
                        t.dims.clone(),
                        Rc::new(v.iter().map(|x| x.to_bits()).collect()),
                    ))
                }
                Val::Ints { .. } => {
                    return Err(format!(
                        "input {k} is an int64 constant where a float tensor is expected"
                    ))
                }
            });
        }
        Ok(vec![Val::Expr(Rc::new(Expr::Node(name, args)))])
    };
    match op {
        "Conv" => {
            only_attrs(node, &["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])?;
            let x = expr(0)?;
            let p = weight_bias()?;
            let k = floats[&node.input[1]].dims.get(2..).map(|d| d.to_vec()).unwrap_or_default();
            if let Some(ks) = attr_ints(node, "kernel_shape")? {
                if ks != k {
                    return Err(format!("kernel_shape {ks:?} but the weight is {k:?}"));
                }
            }
            let stride = square(node, "strides", 2)?;
            let pad = square(node, "pads", 4)?.unwrap_or(0);
            want_ints(node, "dilations", &[&[1, 1]])?;
            want_int(node, "group", 1, &[1])?;
            if let Some(a) = attr_s(node, "auto_pad")? {
                if a != "NOTSET" && a != "VALID" {
                    return Err(format!("auto_pad {a}; stn's convolutions are padded by `pads` only"));
                }
            }
            one(Expr::Conv(x, p, stride.unwrap_or(1), pad))
        }
        "MaxPool" | "AveragePool" => {
            let extra = if op == "MaxPool" { "storage_order" } else { "count_include_pad" };
            only_attrs(node, &["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", extra])?;
            n_inputs(1, 1)?;
            let x = expr(0)?;
            let k = square(node, "kernel_shape", 2)?.ok_or("no kernel_shape")?;
            let stride = square(node, "strides", 2)?.unwrap_or(1);
            want_ints(node, "pads", &[&[0, 0, 0, 0]])?;
            want_ints(node, "dilations", &[&[1, 1]])?;
            want_int(node, "ceil_mode", 0, &[0])?;
            // Either value: MaxPool's storage order concerns only its Indices output (which
            // nothing may read), AveragePool's count_include_pad only padding (none here).
            want_int(node, extra, 0, &[0, 1])?;
            if let Some(a) = attr_s(node, "auto_pad")? {
                if a != "NOTSET" && a != "VALID" {
                    return Err(format!("auto_pad {a}; stn's pools are unpadded"));
                }
            }
            one(if op == "MaxPool" {
                Expr::Pool(x, k, stride)
            } else {
                Expr::AvgPool(x, k, stride)
            })
        }
        "Relu" => {
            only_attrs(node, &[])?;
            n_inputs(1, 1)?;
            one(Expr::Relu(expr(0)?))
        }
        "Identity" => {
            only_attrs(node, &[])?;
            n_inputs(1, 1)?;
            Ok(vec![get(0)?.clone()])
        }
        "Dropout" => {
            // Inference: the identity, unless training_mode is given (and true).
            only_attrs(node, &["seed"])?;
            n_inputs(1, 3)?;
            if node.input.get(2).is_some_and(|t| !t.is_empty()) {
                return Err("training_mode input: the seed network is exported for inference".into());
            }
            Ok(vec![Val::Expr(expr(0)?)])
        }
        "Reshape" => {
            only_attrs(node, &["allowzero"])?;
            n_inputs(2, 2)?;
            let x = expr(0)?;
            let (shape, scalar) = ints(1)?;
            if scalar {
                return Err("shape is a scalar".into());
            }
            let shape: Vec<i64> = shape
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Batch if i == 0 => Ok(-1),
                    Dim::Known(v) if *v == -1 && i == 0 => Ok(-1),
                    Dim::Known(v) if *v > 0 => Ok(*v),
                    d => Err(format!("shape {shape:?}: dimension {i} is {d:?}; the seed network reshapes to [-1, …] with positive sizes")),
                })
                .collect::<Result<_, _>>()?;
            // opset 16's affine grid: Reshape(MatMul(base, Transpose(theta)), [-1, S, S, 2]).
            if let (Expr::BaseGridMatMul(inner), Some([ho, wo])) = (x.as_ref(), want.transform.output()) {
                if let Expr::Transpose021(theta) = inner.as_ref() {
                    if shape == [-1, ho as i64, wo as i64, 2] {
                        return one(Expr::AffineGrid(theta.clone()));
                    }
                }
            }
            one(Expr::Reshape(x, shape))
        }
        "Flatten" => Err(
            "the seed network flattens with Reshape [-1, n] (as stn-export and torch.onnx write it)".into(),
        ),
        "Gemm" => {
            only_attrs(node, &["alpha", "beta", "transA", "transB"])?;
            let x = expr(0)?;
            let p = weight_bias()?;
            want_int(node, "transA", 0, &[0])?;
            want_int(node, "transB", 0, &[1])?;
            for a in ["alpha", "beta"] {
                let v = attr_f(node, a, 1.0)?;
                if v != 1.0 {
                    return Err(format!("{a} = {v}; the seed network has 1"));
                }
            }
            one(Expr::Gemm(x, p))
        }
        "LogSoftmax" => {
            only_attrs(node, &["axis"])?;
            n_inputs(1, 1)?;
            want_int(node, "axis", if opset >= 13 { -1 } else { 1 }, &[1, -1])?;
            one(Expr::LogSoftmax(expr(0)?))
        }
        "Transpose" => {
            only_attrs(node, &["perm"])?;
            n_inputs(1, 1)?;
            match attr_ints(node, "perm")? {
                Some(p) if p == [0, 2, 1] => one(Expr::Transpose021(expr(0)?)),
                p => Err(format!("perm {p:?}; the seed network transposes theta with [0, 2, 1]")),
            }
        }
        "MatMul" => {
            only_attrs(node, &[])?;
            n_inputs(2, 2)?;
            let Some(smp) = want.transform.sampler() else {
                return Err("a MatMul in a network without a transformer".into());
            };
            // The affine grid's (and the projective's) constant base grid times a computed value:
            // the opset-16 affine grid's product. Any other product is a head's generic node.
            if let (Val::Floats(base), Val::Expr(x)) = (get(0)?, get(1)?) {
                let t = constant(base)?;
                let [ho, wo] = smp.output;
                let (xs, ys) = (AffineGrid::base::<f32>(wo, smp.align_corners), AffineGrid::base::<f32>(ho, smp.align_corners));
                let grid: Vec<f32> = ys.iter().flat_map(|&y| xs.iter().flat_map(move |&x| [x, y, 1.0])).collect();
                if t.dims == [(ho * wo) as i64, 3] {
                    let ok = floats_of(t).is_some_and(|v| v.len() == grid.len() && v.iter().zip(&grid).all(|(a, b)| a.to_bits() == b.to_bits()));
                    if !ok {
                        return Err(format!(
                            "{base} is not the {ho}×{wo} base grid of an affine grid (align_corners = {})",
                            smp.align_corners as i64
                        ));
                    }
                    return one(Expr::BaseGridMatMul(x.clone()));
                }
            }
            generic("MatMul".into(), 2)
        }
        "AffineGrid" => {
            only_attrs(node, &["align_corners"])?;
            n_inputs(2, 2)?;
            let Some(Sampler { output: [ho, wo], align_corners, .. }) = want.transform.sampler().filter(|_| want.transform.is_affine_family()) else {
                return Err("an AffineGrid in a network without an affine transformer".into());
            };
            want_int(node, "align_corners", 0, &[align_corners as i64])?;
            let theta = expr(0)?;
            let (size, _) = ints(1)?;
            let (c, ho, wo) = (want.dims[0], ho as i64, wo as i64);
            if size != [Dim::Batch, Dim::Known(c), Dim::Known(ho), Dim::Known(wo)] {
                return Err(format!("size {size:?}; the network samples [N, {c}, {ho}, {wo}]"));
            }
            one(Expr::AffineGrid(theta))
        }
        "GridSample" => {
            only_attrs(node, &["mode", "padding_mode", "align_corners"])?;
            n_inputs(2, 2)?;
            if !matches!(expr(0)?.as_ref(), Expr::Input) {
                return Err("input 0 is not the model's input image".into());
            }
            let Some(Sampler { padding, align_corners, mode: want_mode, .. }) = want.transform.sampler() else {
                return Err("a GridSample in a network without a transformer".into());
            };
            if want_mode == stn_model::SampleMode::Bicubic && padding != Padding::Zeros {
                return Err("cubic sampling with border or reflection padding: ONNX pads the coordinate before the taps, stn (as PyTorch) each tap".into());
            }
            let mode = attr_s(node, "mode")?;
            let spelled = if opset >= 20 { want_mode.op().onnx20_name() } else { want_mode.op().name() };
            // The default mode is bilinear at every opset.
            if mode.as_deref().unwrap_or(if opset >= 20 { "linear" } else { "bilinear" }) != spelled {
                return Err(format!(
                    "mode {:?}; the network samples with {spelled:?} (the spelling of opset {opset})",
                    mode.unwrap_or_default()
                ));
            }
            let pad = match padding {
                Padding::Zeros => "zeros",
                Padding::Border => "border",
                Padding::Reflection => "reflection",
            };
            let p = attr_s(node, "padding_mode")?.unwrap_or_else(|| "zeros".into());
            if p != pad {
                return Err(format!("padding_mode {p:?}; the network pads with {pad:?}"));
            }
            want_int(node, "align_corners", 0, &[align_corners as i64])?;
            one(Expr::GridSample(expr(1)?))
        }
        "Constant" => {
            n_inputs(0, 0)?;
            let [a] = node.attribute.as_slice() else {
                return Err("a Constant has one attribute".into());
            };
            match (a.name.as_deref(), &a.t) {
                (Some("value"), Some(t)) if a.r#type == Some(AttributeType::Tensor as i32) => {
                    if t.data_type == Some(DataType::Int64 as i32) {
                        Ok(vec![ints_of(t)?])
                    } else if t.data_type == Some(DataType::Float as i32) {
                        let name = node.output.first().cloned().unwrap_or_default();
                        let mut t = t.clone();
                        t.name = Some(name.clone());
                        constants.push(t);
                        Ok(vec![Val::Floats(name)])
                    } else {
                        Err(format!("a constant of data type {:?}", t.data_type))
                    }
                }
                (n, _) => Err(format!("attribute {n:?}: the seed network's constants are `value` tensors")),
            }
        }
        "Shape" => {
            only_attrs(node, &["start", "end"])?;
            n_inputs(1, 1)?;
            if !matches!(expr(0)?.as_ref(), Expr::Input) {
                return Err("the seed network takes the shape of its input only".into());
            }
            let [c, h, w] = want.dims;
            let dims = [Dim::Batch, Dim::Known(c), Dim::Known(h), Dim::Known(w)];
            let (start, end) = (attr_i(node, "start", 0)?, attr_i(node, "end", 4)?);
            let clamp = |v: i64| if v < 0 { (v + 4).max(0) } else { v.min(4) } as usize;
            let (a, b) = (clamp(start), clamp(end));
            Ok(vec![Val::Ints {
                v: if a < b { dims[a..b].to_vec() } else { vec![] },
                scalar: false,
            }])
        }
        "Gather" => {
            only_attrs(node, &["axis"])?;
            n_inputs(2, 2)?;
            want_int(node, "axis", 0, &[0])?;
            let (data, s) = ints(0)?;
            let (idx, scalar) = ints(1)?;
            if s {
                return Err("gathers from a scalar".into());
            }
            let mut out = Vec::new();
            for i in idx {
                let Dim::Known(i) = i else { return Err("index is not a number".into()) };
                let n = data.len() as i64;
                let j = if i < 0 { i + n } else { i };
                if !(0..n).contains(&j) {
                    return Err(format!("index {i} out of range for {n} values"));
                }
                out.push(data[j as usize]);
            }
            Ok(vec![Val::Ints { v: out, scalar }])
        }
        "Unsqueeze" => {
            only_attrs(node, &["axes"])?;
            let axes = if opset >= 13 {
                n_inputs(2, 2)?;
                ints(1)?.0
            } else {
                n_inputs(1, 1)?;
                attr_ints(node, "axes")?.unwrap_or_default().into_iter().map(Dim::Known).collect()
            };
            let (v, scalar) = ints(0)?;
            if !scalar || !(axes == [Dim::Known(0)] || axes == [Dim::Known(-1)]) {
                return Err(format!("axes {axes:?}; the seed network unsqueezes scalars on axis 0"));
            }
            Ok(vec![Val::Ints { v, scalar: false }])
        }
        "Concat" => {
            only_attrs(node, &["axis"])?;
            if node.input.is_empty() {
                return Err("no inputs".into());
            }
            want_int(node, "axis", 0, &[0, -1])?;
            let mut v = Vec::new();
            for k in 0..node.input.len() {
                let (x, scalar) = ints(k)?;
                if scalar {
                    return Err("concatenates a scalar".into());
                }
                v.extend(x);
            }
            Ok(vec![Val::Ints { v, scalar: false }])
        }
        "Slice" if matches!(get(0)?, Val::Expr(_)) => {
            // Columns of a head's parameters: one axis, step 1, constant bounds.
            only_attrs(node, &[])?;
            n_inputs(4, 5)?;
            let num = |k: usize| -> Result<i64, String> {
                match ints(k)?.0.as_slice() {
                    [Dim::Known(v)] => Ok(*v),
                    v => Err(format!("input {k} is {v:?}; a head slices one axis")),
                }
            };
            if node.input.get(4).is_some_and(|n| !n.is_empty()) && num(4)? != 1 {
                return Err("a head's slice has step 1".into());
            }
            let name = slice_name(num(1)?, num(2)?, num(3)?);
            one(Expr::Node(name, vec![expr(0)?]))
        }
        "Add" | "Abs" | "Less" | "Where" | "Div" => {
            only_attrs(node, &[])?;
            let arity = match op {
                "Abs" => 1,
                "Where" => 3,
                _ => 2,
            };
            generic(op.to_string(), arity)
        }
        "Slice" => {
            only_attrs(node, &[])?;
            n_inputs(3, 5)?;
            let (data, s) = ints(0)?;
            let one_num = |k: usize, default: i64| -> Result<i64, String> {
                if node.input.get(k).is_none_or(|n| n.is_empty()) {
                    return Ok(default);
                }
                match ints(k)?.0.as_slice() {
                    [Dim::Known(v)] => Ok(*v),
                    v => Err(format!("input {k} is {v:?}; the seed network slices one axis")),
                }
            };
            let (start, end, axis, step) = (one_num(1, 0)?, one_num(2, 0)?, one_num(3, 0)?, one_num(4, 1)?);
            if s || axis != 0 || step != 1 {
                return Err("the seed network slices a 1-D shape with step 1".into());
            }
            let n = data.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) } as usize;
            let (a, b) = (clamp(start), clamp(end));
            Ok(vec![Val::Ints {
                v: if a < b { data[a..b].to_vec() } else { vec![] },
                scalar: false,
            }])
        }
        other => Err(format!(
            "operator {other:?} is not part of an stn network (stn runs Conv, MaxPool, AveragePool, Relu, Reshape, Gemm, LogSoftmax, GridSample, AffineGrid or its opset-16 form, and the heads' MatMul, Slice, Add, Abs, Less, Where, Div)"
        )),
    }
}
