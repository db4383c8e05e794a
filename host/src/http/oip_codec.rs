//! The Open Inference Protocol's wire format (KServe v2 REST, as Triton speaks it): inference
//! requests and responses as JSON, and the binary tensor data extension, where the JSON header
//! (`Inference-Header-Content-Length` bytes) is followed by raw tensors in input order.
//!
//! Pure and synchronous: bytes in, tensors out, and back. Tensor `data` is flattened while it is
//! parsed (never held as a tree of JSON values), row-major as the protocol says.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The header naming the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request the client got wrong; the message names the input and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(message.into()))
}

/// A `parameters` value: the protocol allows strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

pub type Parameters = BTreeMap<String, Parameter>;

#[derive(Debug, Deserialize)]
struct RequestHeader {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputHeader>,
    outputs: Option<Vec<OutputHeader>>,
}

#[derive(Debug, Deserialize)]
struct InputHeader {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<FlatData>,
}

#[derive(Debug, Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// A tensor's elements as they arrived: JSON data flattened, or binary data still raw.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
    Bools(Vec<bool>),
    /// Bytes from the binary extension, in the datatype's little-endian layout.
    Raw(Vec<u8>),
}

/// One input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    pub elements: Elements,
}

impl Input {
    /// Elements the shape holds.
    pub fn count(&self) -> Result<usize, WireError> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?)).ok_or_else(|| {
            WireError(format!("input '{}' has a shape too large: {:?}", self.name, self.shape))
        })
    }

    /// The tensor as FP32 little-endian bytes, checked against its shape.
    pub fn fp32_bytes(&self) -> Result<Vec<u8>, WireError> {
        if self.datatype != "FP32" {
            return bad(format!("input '{}' must be FP32, not {}", self.name, self.datatype));
        }
        let count = self.count()?;
        match &self.elements {
            Elements::Raw(raw) if raw.len() == count * 4 => Ok(raw.clone()),
            Elements::Raw(raw) => bad(format!(
                "input '{}' of shape {:?} needs {} bytes of FP32 data, got {}",
                self.name,
                self.shape,
                count * 4,
                raw.len()
            )),
            Elements::Numbers(n) if n.len() == count => {
                Ok(n.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect())
            }
            Elements::Numbers(n) => bad(format!(
                "input '{}' of shape {:?} needs {count} elements, got {}",
                self.name,
                self.shape,
                n.len()
            )),
            _ => bad(format!("input '{}' is FP32 but its data are not numbers", self.name)),
        }
    }

    /// The tensor as BYTES elements, checked against its shape. JSON carries each element as a
    /// string; the binary extension as a 4-byte little-endian length and the bytes.
    pub fn bytes_elements(&self) -> Result<Vec<Vec<u8>>, WireError> {
        if self.datatype != "BYTES" {
            return bad(format!("input '{}' must be BYTES, not {}", self.name, self.datatype));
        }
        let count = self.count()?;
        let elements = match &self.elements {
            Elements::Strings(s) => s.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Elements::Raw(raw) => split_bytes(&self.name, raw)?,
            _ => return bad(format!("input '{}' is BYTES but its data are not strings", self.name)),
        };
        if elements.len() != count {
            return bad(format!(
                "input '{}' of shape {:?} needs {count} elements, got {}",
                self.name,
                self.shape,
                elements.len()
            ));
        }
        Ok(elements)
    }
}

/// Splits a binary BYTES tensor into its length-prefixed elements.
fn split_bytes(name: &str, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return bad(format!(
                "input '{name}': BYTES element {} has a truncated length prefix",
                elements.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return bad(format!(
                "input '{name}': BYTES element {} claims {len} bytes but {} remain",
                elements.len(),
                rest.len()
            ));
        }
        elements.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    Ok(elements)
}

/// What the client asked for back.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub name: String,
    pub binary: bool,
}

/// A parsed inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<Input>,
    /// `None`: every output, in JSON unless `binary_data_output` asks for binary.
    pub outputs: Option<Vec<Requested>>,
    /// The request-wide `binary_data_output` parameter.
    pub binary_output: bool,
}

impl Request {
    /// The input called `name`.
    pub fn input(&self, name: &str) -> Result<&Input, WireError> {
        self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            let given: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
            WireError(format!("the request has no input '{name}' (it has: {})", given.join(", ")))
        })
    }

    /// Refuses inputs other than `names` (a misspelt name would otherwise be ignored).
    pub fn only_inputs(&self, names: &[&str]) -> Result<(), WireError> {
        match self.inputs.iter().find(|i| !names.contains(&i.name.as_str())) {
            Some(i) => bad(format!("unknown input '{:.64}'; this model takes: {}", i.name, names.join(", "))),
            None => Ok(()),
        }
    }
}

fn flag(parameters: &Parameters, key: &str) -> Result<bool, WireError> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Parameter::Bool(b)) => Ok(*b),
        Some(other) => bad(format!("parameter '{key}' must be a boolean, got {other:?}")),
    }
}

fn size(parameters: &Parameters, name: &str) -> Result<Option<usize>, WireError> {
    match parameters.get("binary_data_size") {
        None => Ok(None),
        Some(Parameter::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
        Some(other) => {
            bad(format!("input '{name}': binary_data_size must be a non-negative integer, got {other:?}"))
        }
    }
}

/// Parses a request body. `header_length` is the `Inference-Header-Content-Length` header's
/// value, if sent: then the body is that much JSON followed by the binary tensors.
pub fn parse_request(body: &[u8], header_length: Option<&str>) -> Result<Request, WireError> {
    let json_len = match header_length {
        None => body.len(),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n <= body.len() => n,
            Ok(n) => {
                return bad(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                ));
            }
            Err(_) => {
                return bad(format!("Inference-Header-Content-Length '{text:.32}' is not a byte count"));
            }
        },
    };
    let (json, mut binary) = body.split_at(json_len);
    let header: RequestHeader = serde_json::from_slice(json)
        .map_err(|e| WireError(format!("the inference request is not valid: {e}")))?;
    if header.inputs.is_empty() {
        return bad("the inference request has no inputs");
    }
    let mut inputs = Vec::with_capacity(header.inputs.len());
    for input in header.inputs {
        let elements = match (size(&input.parameters, &input.name)?, input.data) {
            (Some(n), None) => {
                if binary.len() < n {
                    return bad(format!(
                        "input '{}' declares {n} bytes of binary data but only {} follow the JSON",
                        input.name,
                        binary.len()
                    ));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                Elements::Raw(mine.to_vec())
            }
            (None, Some(data)) => data.into_elements(),
            (Some(_), Some(_)) => {
                return bad(format!("input '{}' has both data and binary_data_size", input.name));
            }
            (None, None) => {
                return bad(format!("input '{}' has neither data nor binary_data_size", input.name));
            }
        };
        inputs.push(Input { name: input.name, shape: input.shape, datatype: input.datatype, elements });
    }
    if !binary.is_empty() {
        return bad(format!(
            "{} bytes follow the inputs' binary data: unexpected additional input data",
            binary.len()
        ));
    }
    let binary_output = flag(&header.parameters, "binary_data_output")?;
    let outputs = match header.outputs {
        None => None,
        Some(outputs) => Some(
            outputs
                .into_iter()
                .map(|o| {
                    if o.parameters.contains_key("classification") {
                        return bad(format!(
                            "output '{}': the classification extension is not supported; ask for the \
                             outputs themselves",
                            o.name
                        ));
                    }
                    let binary = match o.parameters.get("binary_data") {
                        None => binary_output,
                        Some(_) => flag(&o.parameters, "binary_data")?,
                    };
                    Ok(Requested { name: o.name, binary })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Request { id: header.id, parameters: header.parameters, inputs, outputs, binary_output })
}

/// An output tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: OutputData,
}

#[derive(Serialize)]
struct ResponseHeader<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHeaderOut<'a>>,
}

#[derive(Serialize)]
struct OutputHeaderOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a OutputData>,
}

/// JSON data: FP32 as the shortest decimal that reads back as the same f32, BYTES as strings.
impl Serialize for OutputData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            OutputData::Fp32(v) => v.serialize(serializer),
            OutputData::Bytes(v) => {
                let mut seq = serializer.serialize_seq(Some(v.len()))?;
                for element in v {
                    seq.serialize_element(&String::from_utf8_lossy(element))?;
                }
                seq.end()
            }
        }
    }
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An encoded response body.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// The JSON part's length when binary tensors follow it (send it as
    /// `Inference-Header-Content-Length`, with `application/octet-stream`).
    pub header_length: Option<usize>,
}

/// Chooses the outputs the request asked for (all when it named none), in the order asked.
pub fn select(outputs: Vec<Output>, request: &Request) -> Result<Vec<(Output, bool)>, WireError> {
    let Some(wanted) = &request.outputs else {
        return Ok(outputs.into_iter().map(|o| (o, request.binary_output)).collect());
    };
    let mut available: BTreeMap<String, Output> = outputs.into_iter().map(|o| (o.name.clone(), o)).collect();
    wanted
        .iter()
        .map(|w| match available.remove(&w.name) {
            Some(o) => Ok((o, w.binary)),
            None => bad(format!("unknown or repeated output '{:.64}'", w.name)),
        })
        .collect()
}

/// Encodes the response: JSON alone, or the JSON header and the binary outputs after it.
pub fn encode_response(model: &str, version: &str, id: Option<&str>, outputs: &[(Output, bool)]) -> Encoded {
    let mut binary = Vec::new();
    let headers = outputs
        .iter()
        .map(|(o, as_binary)| {
            let datatype = match o.data {
                OutputData::Fp32(_) => "FP32",
                OutputData::Bytes(_) => "BYTES",
            };
            let (parameters, data) = if *as_binary {
                let start = binary.len();
                match &o.data {
                    OutputData::Fp32(v) => binary.extend(v.iter().flat_map(|x| x.to_le_bytes())),
                    OutputData::Bytes(v) => {
                        for element in v {
                            binary.extend((element.len() as u32).to_le_bytes());
                            binary.extend(element);
                        }
                    }
                }
                (Some(BinarySize { binary_data_size: binary.len() - start }), None)
            } else {
                (None, Some(&o.data))
            };
            OutputHeaderOut { name: &o.name, datatype, shape: &o.shape, parameters, data }
        })
        .collect();
    let header = ResponseHeader { model_name: model, model_version: version, id, outputs: headers };
    let mut body = serde_json::to_vec(&header).expect("the response header serializes");
    if binary.is_empty() && outputs.iter().all(|(_, b)| !b) {
        return Encoded { body, header_length: None };
    }
    let header_length = body.len();
    body.extend(binary);
    Encoded { body, header_length: Some(header_length) }
}

/// Tensor `data` flattened while it is parsed: nested arrays become one row-major list.
#[derive(Debug, Default)]
struct FlatData {
    numbers: Vec<f64>,
    strings: Vec<String>,
    bools: Vec<bool>,
}

impl FlatData {
    fn into_elements(self) -> Elements {
        if !self.strings.is_empty() {
            Elements::Strings(self.strings)
        } else if !self.bools.is_empty() {
            Elements::Bools(self.bools)
        } else {
            Elements::Numbers(self.numbers)
        }
    }

    fn kinds(&self) -> usize {
        [!self.numbers.is_empty(), !self.strings.is_empty(), !self.bools.is_empty()]
            .iter()
            .filter(|&&b| b)
            .count()
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = FlatData::default();
        deserializer.deserialize_any(Flatten(&mut flat))?;
        if flat.kinds() > 1 {
            return Err(de::Error::custom("tensor data mixes numbers, strings and booleans"));
        }
        Ok(flat)
    }
}

/// Appends one `data` value (an element or an array of them, to any depth) to the list.
struct Flatten<'a>(&'a mut FlatData);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data: numbers, strings or booleans, in arrays nested to any depth")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.numbers.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.numbers.push(v as f64);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.numbers.push(v as f64);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.bools.push(v);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(v.to_string());
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.strings.push(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_flattened_row_major_and_checked_against_the_shape() {
        let body = br#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#;
        let request = parse_request(body, None).unwrap();
        let input = request.input("input").unwrap();
        let bytes = input.fp32_bytes().unwrap();
        let values: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [1.0, 2.5, 3.0, 4.0]);

        let short = br#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let err = parse_request(short, None).unwrap().inputs[0].fp32_bytes().unwrap_err();
        assert!(err.0.contains("needs 6 elements, got 4"), "{err:?}");
        let mixed = br#"{"inputs":[{"name":"input","shape":[2],"datatype":"FP32","data":[1,"x"]}]}"#;
        assert!(parse_request(mixed, None).unwrap_err().0.contains("mixes"));
        let huge = br#"{"inputs":[{"name":"i","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[]}]}"#;
        assert!(
            parse_request(huge, None).unwrap().inputs[0].fp32_bytes().unwrap_err().0.contains("too large")
        );
    }

    #[test]
    fn the_binary_extension_splits_the_body_in_input_order() {
        let json = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}},{"name":"b","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"outputs":[{"name":"x","parameters":{"binary_data":true}},{"name":"y"}]}"#;
        let mut body = json.to_vec();
        body.extend(1.5f32.to_le_bytes());
        body.extend(3u32.to_le_bytes());
        body.extend(b"gif");
        body.extend(0u32.to_le_bytes());
        let length = json.len().to_string();
        let request = parse_request(&body, Some(&length)).unwrap();
        assert_eq!(request.input("a").unwrap().fp32_bytes().unwrap(), 1.5f32.to_le_bytes());
        assert_eq!(request.input("b").unwrap().bytes_elements().unwrap(), vec![b"gif".to_vec(), vec![]]);
        let wanted = request.outputs.as_ref().unwrap();
        assert_eq!((wanted[0].binary, wanted[1].binary), (true, false));

        let mut extra = body.clone();
        extra.push(0);
        assert!(parse_request(&extra, Some(&length)).unwrap_err().0.contains("unexpected additional"));
        assert!(parse_request(&body[..body.len() - 2], Some(&length)).unwrap_err().0.contains("only"));
        assert!(parse_request(&body, Some("99999")).unwrap_err().0.contains("only"));
        assert!(parse_request(&body, Some("-1")).unwrap_err().0.contains("not a byte count"));
    }

    #[test]
    fn bytes_elements_must_have_whole_length_prefixes() {
        let input = |raw: Vec<u8>| Input {
            name: "media".into(),
            shape: vec![1],
            datatype: "BYTES".into(),
            elements: Elements::Raw(raw),
        };
        assert!(input(vec![9, 0, 0, 0, 1]).bytes_elements().unwrap_err().0.contains("claims 9 bytes"));
        assert!(input(vec![1, 0]).bytes_elements().unwrap_err().0.contains("truncated"));
        assert!(
            input(vec![0, 0, 0, 0, 0, 0, 0, 0])
                .bytes_elements()
                .unwrap_err()
                .0
                .contains("needs 1 elements, got 2")
        );
    }

    #[test]
    fn responses_are_json_or_a_json_header_and_binary_tensors() {
        let outputs = vec![
            (
                Output {
                    name: "label".into(),
                    shape: vec![1],
                    data: OutputData::Bytes(vec![b"pan_left".to_vec()]),
                },
                true,
            ),
            (
                Output { name: "scores".into(), shape: vec![1, 2], data: OutputData::Fp32(vec![0.25, 0.75]) },
                false,
            ),
        ];
        let encoded = encode_response("m", "1", Some("r1"), &outputs);
        let n = encoded.header_length.unwrap();
        let header: serde_json::Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        assert_eq!(header["id"], "r1");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 12);
        assert_eq!(header["outputs"][1]["data"], serde_json::json!([0.25, 0.75]));
        assert_eq!(&encoded.body[n..], b"\x08\x00\x00\x00pan_left");

        let json_only = encode_response("m", "1", None, &[(outputs[1].0.clone(), false)]);
        assert!(json_only.header_length.is_none());
        let header: serde_json::Value = serde_json::from_slice(&json_only.body).unwrap();
        assert!(header.get("id").is_none());
    }

    #[test]
    fn outputs_are_chosen_by_name_and_unknown_names_refused() {
        let request = parse_request(
            br#"{"inputs":[{"name":"a","shape":[0],"datatype":"FP32","data":[]}],"outputs":[{"name":"nope"}]}"#,
            None,
        )
        .unwrap();
        let out = Output { name: "x".into(), shape: vec![1], data: OutputData::Fp32(vec![1.0]) };
        assert!(select(vec![out], &request).unwrap_err().0.contains("'nope'"));
        let classification = br#"{"inputs":[{"name":"a","shape":[0],"datatype":"FP32","data":[]}],"outputs":[{"name":"x","parameters":{"classification":2}}]}"#;
        assert!(parse_request(classification, None).unwrap_err().0.contains("classification"));
    }
}
