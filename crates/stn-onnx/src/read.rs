//! ONNX models read back into the seed network's parameters, once [`crate::verify`] has checked
//! that the graph computes the seed network.

use prost::Message;
use stn_model::{Arch, ModelSpec, Network, Params};

use crate::proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim, type_proto, ModelProto,
    TensorProto,
};
use crate::OnnxError;

/// A model's parameters and what else the runtimes and the CLI want to know about it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The network's parameters, by PyTorch's names, with the architecture the input implies.
    pub params: Params,
    /// The graph's (one) input, `[N, C, H, W]` float32.
    pub input: String,
    /// The default-domain opset the model imports.
    pub opset: i64,
    /// The graph's output names, in order (the log-probs first).
    pub outputs: Vec<String>,
    /// The model's `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

impl LoadedModel {
    /// The metadata value of `key`, if the model has one.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn floats(t: &TensorProto, path: &str, name: &str) -> Result<Vec<f32>, OnnxError> {
    let bad = |what: String| OnnxError::Model {
        path: path.to_string(),
        what: format!("initializer {name}: {what}"),
    };
    if t.data_type != Some(DataType::Float as i32) {
        return Err(bad(format!(
            "data type {:?}, expected FLOAT (1)",
            t.data_type
        )));
    }
    let n = t.dims.iter().try_fold(1usize, |a, &d| {
        usize::try_from(d).ok().and_then(|d| a.checked_mul(d))
    });
    let n = n.ok_or_else(|| bad(format!("bad dimensions {:?}", t.dims)))?;
    let data: Vec<f32> = match &t.raw_data {
        Some(raw) if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => t.float_data.clone(),
    };
    if data.len() != n {
        return Err(bad(format!(
            "{} values for dimensions {:?}",
            data.len(),
            t.dims
        )));
    }
    Ok(data)
}

/// Reads an ONNX model of the seed network: ours, or PyTorch's export of `Net`.
pub fn read_model(bytes: &[u8], path: &str) -> Result<LoadedModel, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: path.into(),
        what: e.to_string(),
    })?;
    let bad = |what: String| OnnxError::Model {
        path: path.into(),
        what,
    };
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .ok_or_else(|| bad("imports no ONNX opset".into()))?;
    let init_names: Vec<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let input = graph
        .input
        .iter()
        .find(|i| !init_names.contains(&i.name.as_deref().unwrap_or("")))
        .ok_or_else(|| bad("has no input".into()))?;
    let dims: Vec<Option<i64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| {
                        if let Some(Dim::DimValue(v)) = d.value {
                            Some(v)
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
    let input_name = input.name.clone().unwrap_or_default();
    let elem = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type,
        None => None,
    };
    if elem != Some(DataType::Float as i32) {
        return Err(bad(format!(
            "input '{input_name}' has element type {elem:?}; expected FLOAT (1)"
        )));
    }
    if let Some(Some(n)) = dims.first() {
        return Err(bad(format!(
            "input '{input_name}' has a fixed batch size {n}; stn runs models with a symbolic batch \
             dimension (torch.onnx.export(..., dynamic_axes={{'input': {{0: 'batch'}}}}))"
        )));
    }
    let meta = |k: &str| {
        model
            .metadata_props
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.as_deref())
    };
    // The network: the spec stn-export stores; without one (PyTorch's export of the seed's
    // `Net`), the seed family the input shape and the initializers imply.
    let net: Network = match meta("stn.spec") {
        Some(text) => {
            let spec: ModelSpec = serde_json::from_str(text)
                .map_err(|e| bad(format!("metadata stn.spec: not a model spec: {e}")))?;
            let net = Network::new(spec).map_err(|e| bad(format!("metadata stn.spec: {e}")))?;
            let [c, h, w] = net.input_dims();
            if dims.as_slice() != [None, Some(c as i64), Some(h as i64), Some(w as i64)] {
                return Err(bad(format!(
                    "input '{input_name}' has shape {dims:?}, but its stn.spec takes [N, {c}, {h}, {w}]"
                )));
            }
            net
        }
        None => {
            let side = match dims.as_slice() {
                [_, Some(1), Some(h), Some(w)]
                    if h == w && *h >= 28 && *h <= Arch::MAX_CANVAS as i64 =>
                {
                    *h as usize
                }
                _ => {
                    return Err(bad(format!(
                        "input '{input_name}' has shape {dims:?}; expected [N, 1, S, S] with S ≥ 28 (an MNIST-like image batch), or a model with its stn.spec"
                    )))
                }
            };
            let stn = init_names.contains(&"localization.0.weight");
            Arch { canvas: side, stn }.into()
        }
    };
    let outputs = crate::verify::verify(graph, &net, &input_name, opset).map_err(|what| {
        bad(if net.seed_arch().is_some() {
            format!("not the seed network ({net}): {what}")
        } else {
            format!("not the network of its stn.spec: {what}")
        })
    })?;
    let specs = net.plan().params.clone();
    let mut named = Vec::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        if specs.iter().any(|(s, _)| *s == name) {
            let data = floats(t, path, &name)?;
            named.push((name, t.dims.iter().map(|&d| d as usize).collect(), data));
        }
    }
    let params = Params::from_named(net, named).map_err(|e| OnnxError::Params {
        path: path.into(),
        source: e,
    })?;
    Ok(LoadedModel {
        params,
        input: input_name,
        opset,
        outputs,
        metadata: model
            .metadata_props
            .iter()
            .map(|e| {
                (
                    e.key.clone().unwrap_or_default(),
                    e.value.clone().unwrap_or_default(),
                )
            })
            .collect(),
    })
}
