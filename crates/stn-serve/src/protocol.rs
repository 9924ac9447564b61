//! The Open Inference Protocol's (KServe v2) infer request and response, in JSON and with the
//! binary tensor data extension: the JSON header followed by raw little-endian tensors, its length
//! in the `Inference-Header-Content-Length` header.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stn_runtime::RunOutput;

use crate::error::ApiError;
use crate::model::ModelInfo;

/// The HTTP header that holds the JSON header's length in a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<FlatF32>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A tensor's `data`: numbers, flat or nested row-major, read straight into f32 (no `Value`s).
struct FlatF32(Vec<f32>);

impl<'de> Deserialize<'de> for FlatF32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_seq(Flatten(&mut out))?;
        Ok(FlatF32(out))
    }
}

struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers (flat or nested)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve(n);
        }
        while seq.next_element_seed(Element(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One element of `data`: a number, or a nested array.
struct Element<'a>(&'a mut Vec<f32>);

impl<'de> de::DeserializeSeed<'de> for Element<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let x = v as f32;
        if !x.is_finite() {
            return Err(E::custom(format!("{v} is not a finite float32")));
        }
        self.0.push(x);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Flatten(self.0).visit_seq(seq)
    }
}

/// A checked infer request: the images in the model's layout and what to send back.
#[derive(Debug)]
pub struct Request {
    /// The request's `id`, echoed.
    pub id: Option<Value>,
    /// `n · C · H · W` values.
    pub images: Vec<f32>,
    /// Images.
    pub n: usize,
    /// The outputs to return (indices into [`ModelInfo::outputs`]) and whether each goes as
    /// binary data.
    pub outputs: Vec<(usize, bool)>,
}

fn flag(p: &Option<Map<String, Value>>, key: &str) -> Result<Option<bool>, ApiError> {
    match p.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!(
            "parameter {key}: {v} is not a boolean"
        ))),
    }
}

/// Reads and checks an infer request's body for `model`; `header_len` is the
/// `Inference-Header-Content-Length` (binary tensor data follows the JSON header).
pub fn parse_request(
    body: &[u8],
    header_len: Option<usize>,
    model: &ModelInfo,
) -> Result<Request, ApiError> {
    let (json, mut binary) = match header_len {
        Some(h) if h > body.len() => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length {h} is longer than the body ({} bytes)",
                body.len()
            )))
        }
        Some(h) => body.split_at(h),
        None => (body, &[][..]),
    };
    let mut req: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ApiError::bad_request(format!("the request is not a valid infer request: {e}"))
    })?;
    let input = &model.input;
    let n_inputs = req.inputs.len();
    let [input_req] = req.inputs.as_mut_slice() else {
        return Err(ApiError::bad_request(format!(
            "{n_inputs} inputs; model '{}' has one, '{}'",
            model.name, input.name
        )));
    };
    if input_req.name != input.name {
        return Err(ApiError::bad_request(format!(
            "unknown input '{}'; model '{}' has one input, '{}'",
            input_req.name, model.name, input.name
        )));
    }
    if input_req.datatype != "FP32" {
        return Err(ApiError::bad_request(format!(
            "input '{}': datatype {}; the model takes FP32",
            input.name, input_req.datatype
        )));
    }
    let want = |n: &str| {
        let dims: Vec<String> = input.dims.iter().map(|d| d.to_string()).collect();
        format!("[{n}, {}]", dims.join(", "))
    };
    let shape = &input_req.shape;
    let n = match shape.split_first() {
        Some((&n, rest))
            if n >= 1
                && rest.len() == input.dims.len()
                && rest.iter().zip(&input.dims).all(|(&a, &b)| a == b as i64) =>
        {
            n as usize
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "input '{}': shape {shape:?}; the model takes {} with N ≥ 1",
                input.name,
                want("N")
            )))
        }
    };
    let values = n.checked_mul(input.len()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input '{}': shape {shape:?} is too large",
            input.name
        ))
    })?;
    let binary_size = match input_req
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "input '{}': binary_data_size {v} is not a size",
                input.name
            ))
        })? as usize),
    };
    let images = match (binary_size, input_req.data.take()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "input '{}' has both data and binary_data_size",
                input.name
            )))
        }
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "input '{}' has no data (nor binary_data_size)",
                input.name
            )))
        }
        (None, Some(FlatF32(v))) => {
            if v.len() != values {
                return Err(ApiError::bad_request(format!(
                    "input '{}': {} values for shape {shape:?} ({values} expected)",
                    input.name,
                    v.len()
                )));
            }
            v
        }
        (Some(size), None) => {
            if header_len.is_none() {
                return Err(ApiError::bad_request(format!(
                    "input '{}': binary_data_size without an Inference-Header-Content-Length header",
                    input.name
                )));
            }
            if Some(size) != values.checked_mul(4) {
                return Err(ApiError::bad_request(format!(
                    "input '{}': binary_data_size {size} for shape {shape:?} ({} bytes of FP32 expected)",
                    input.name,
                    values.saturating_mul(4)
                )));
            }
            if binary.len() != size {
                return Err(ApiError::bad_request(format!(
                    "the body has {} bytes of binary data after its header; its inputs declare {size}",
                    binary.len()
                )));
            }
            let (data, rest) = binary.split_at(size);
            binary = rest;
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(ApiError::bad_request(format!(
                    "input '{}': value {i} is {}; inputs must be finite",
                    input.name, v[i]
                )));
            }
            v
        }
    };
    if binary_size.is_none() && !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes after the JSON header that no input declares",
            binary.len()
        )));
    }
    let all_binary = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = match &req.outputs {
        None => (0..model.outputs.len()).map(|i| (i, all_binary)).collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for o in list {
                let i = model.output(&o.name).ok_or_else(|| {
                    let names: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown output '{}'; model '{}' has {}",
                        o.name,
                        model.name,
                        names.join(", ")
                    ))
                })?;
                if out.iter().any(|&(j, _)| j == i) {
                    return Err(ApiError::bad_request(format!(
                        "output '{}' requested twice",
                        o.name
                    )));
                }
                out.push((i, flag(&o.parameters, "binary_data")?.unwrap_or(all_binary)));
            }
            out
        }
    };
    Ok(Request {
        id: req.id,
        images,
        n,
        outputs,
    })
}

/// An infer response: its body, and the JSON header's length when binary data follows it.
pub struct Response {
    /// JSON, or JSON then binary tensors.
    pub body: Vec<u8>,
    /// `Some(json length)` when outputs go as binary data.
    pub header_len: Option<usize>,
}

#[derive(Serialize)]
struct ResponseHead<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    outputs: Vec<ResponseOutput<'a>>,
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    /// Serialised as f32 (the shortest text that reads back to the same float).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// The response to `req` from its rows `out` of model `model`.
pub fn encode_response(model: &ModelInfo, req: &Request, out: &RunOutput) -> Response {
    let mut binary: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for &(i, as_binary) in &req.outputs {
        let t = &model.outputs[i];
        let data: &[f32] = match t.name.as_str() {
            "log_probs" => &out.log_probs,
            "warped" => out.warped.as_deref().unwrap_or(&[]),
            _ => out.transform.as_deref().unwrap_or(&[]),
        };
        let mut shape = vec![req.n];
        shape.extend(&t.dims);
        let (parameters, data) = if as_binary {
            binary.reserve(data.len() * 4);
            for x in data {
                binary.extend_from_slice(&x.to_le_bytes());
            }
            (
                Some(BinarySize {
                    binary_data_size: data.len() * 4,
                }),
                None,
            )
        } else {
            (None, Some(data))
        };
        outputs.push(ResponseOutput {
            name: &t.name,
            datatype: "FP32",
            shape,
            parameters,
            data,
        });
    }
    let head = ResponseHead {
        model_name: &model.name,
        model_version: model.version.to_string(),
        id: req.id.as_ref(),
        outputs,
    };
    let mut body = serde_json::to_vec(&head).expect("JSON of plain values");
    let header_len = req.outputs.iter().any(|o| o.1).then_some(body.len());
    body.extend_from_slice(&binary);
    Response { body, header_len }
}
