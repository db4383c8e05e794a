//! The Open Inference Protocol's wire format (KServe v2 REST, as Triton speaks it): inference
//! requests and responses as JSON, and the binary tensor data extension, where the JSON header
//! (`Inference-Header-Content-Length` bytes) is followed by raw tensors in input order.
//!
//! Pure and synchronous: bytes in, tensors out, and back. Tensor `data` is flattened while it is
//! parsed (never held as a tree of JSON values), row-major as the protocol says. As Triton
//! does, JSON tensors may hold the literals `NaN`, `Infinity` and `-Infinity`, responses write
//! them, and a BYTES element in JSON is the string's own bytes, which need not be UTF-8 (an
//! input whose `encoding` parameter is `base64` holds base64 text instead).

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
    /// JSON strings, as the bytes they hold (or gRPC's `bytes_contents`).
    Strings(Vec<Vec<u8>>),
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
            Elements::Strings(s) => s.clone(),
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
    let header = parse_header(json)?;
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
            (None, Some(data)) => decode(&input.name, &input.parameters, data.into_elements())?,
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

/// Parses the JSON part of a request. Triton's non-standard literals `NaN`, `Infinity` and
/// `-Infinity` are first rewritten as marked strings that [`Flatten`] reads back as numbers
/// (only when the text has one, outside its strings); a body that is not UTF-8 (a BYTES
/// element's raw bytes) has its tensor strings read as bytes.
fn parse_header(json: &[u8]) -> Result<RequestHeader, WireError> {
    let rewritten = rewrite_non_finite(json);
    let json = rewritten.as_deref().unwrap_or(json);
    let mode = Mode { non_finite: rewritten.is_some(), raw_bytes: std::str::from_utf8(json).is_err() };
    MODE.set(mode);
    let parsed = serde_json::from_slice(json);
    MODE.set(Mode::default());
    parsed.map_err(|e| {
        let hint = if mode.raw_bytes {
            " (the body is not UTF-8: only BYTES tensors' strings may hold raw bytes)"
        } else {
            ""
        };
        WireError(format!("the inference request is not valid: {e}{hint}"))
    })
}

/// How tensor data is read by [`Flatten`] during one [`parse_header`] (a thread-local, as serde's
/// `Deserialize` takes no context).
#[derive(Debug, Default, Clone, Copy)]
struct Mode {
    /// Strings starting with [`NON_FINITE`] are numbers.
    non_finite: bool,
    /// Strings are read as raw bytes (the JSON is not UTF-8).
    raw_bytes: bool,
}

thread_local! {
    static MODE: std::cell::Cell<Mode> = const { std::cell::Cell::new(Mode { non_finite: false, raw_bytes: false }) };
}

/// The mark a rewritten non-finite literal carries: control characters no tensor string holds.
const NON_FINITE: &str = "\u{1}\u{2}non-finite:";

/// The non-finite literals, longest first (`-Infinity` before `Infinity`).
const NON_FINITE_LITERALS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];

/// `json` with every bare `NaN`, `Infinity` and `-Infinity` (outside strings) replaced by a
/// string carrying [`NON_FINITE`]; `None` when it has none. Outside strings, JSON has no
/// capital letters, so a search for `N` and `I` finds them (`-Infinity` at its `I`). The
/// searches skip whole runs of other bytes at once: a large body (an upload as a BYTES string,
/// a long list of numbers) costs a fraction of parsing it.
fn rewrite_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut copied) = (0, 0);
    while let Some(k) = memchr::memchr3(b'"', b'N', b'I', &json[i..]) {
        i += k;
        if json[i] == b'"' {
            i = string_end(json, i + 1);
            continue;
        }
        let start = if json[i] == b'I' && i > copied && json[i - 1] == b'-' { i - 1 } else { i };
        let Some(literal) = NON_FINITE_LITERALS.into_iter().find(|l| json[start..].starts_with(l)) else {
            i += 1;
            continue;
        };
        let out = out.get_or_insert_with(|| Vec::with_capacity(json.len() + 64));
        out.extend_from_slice(&json[copied..start]);
        out.extend_from_slice(b"\"\\u0001\\u0002non-finite:");
        out.extend_from_slice(literal);
        out.push(b'"');
        i = start + literal.len();
        copied = i;
    }
    let mut out = out?;
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

/// Just past the quote that closes the string whose text starts at `i` (the end of `json` if
/// none does), stepping over escapes.
fn string_end(json: &[u8], mut i: usize) -> usize {
    while let Some(k) = memchr::memchr2(b'"', b'\\', &json[i..]) {
        i += k;
        if json[i] == b'"' {
            return i + 1;
        }
        i = (i + 2).min(json.len());
    }
    json.len()
}

/// An input's JSON elements as their `encoding` parameter says: strings are the bytes they
/// hold, or with `"encoding": "base64"`, base64 text.
fn decode(name: &str, parameters: &Parameters, elements: Elements) -> Result<Elements, WireError> {
    match parameters.get("encoding") {
        None => Ok(elements),
        Some(Parameter::Text(t)) if t == "base64" => {
            use base64::Engine as _;
            let Elements::Strings(strings) = elements else {
                return bad(format!(
                    "input '{name}' has \"encoding\": \"base64\" but its data are not strings"
                ));
            };
            let decoded = strings
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| WireError(format!("input '{name}' element {i} is not base64 ({e})")))
                })
                .collect::<Result<_, _>>()?;
            Ok(Elements::Strings(decoded))
        }
        Some(other) => bad(format!(
            "input '{name}': parameter 'encoding' may only be \"base64\" (strings are otherwise their own bytes), got {other:?}"
        )),
    }
}

/// An output tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

impl OutputData {
    /// The protocol's name for the datatype.
    pub fn datatype(&self) -> &'static str {
        match self {
            OutputData::Fp32(_) => "FP32",
            OutputData::Bytes(_) => "BYTES",
        }
    }

    /// Appends the elements as raw tensor bytes, as the binary extension and gRPC's
    /// `raw_output_contents` carry them: FP32 little-endian, BYTES each a 4-byte
    /// little-endian length and its bytes.
    pub fn write_raw(&self, out: &mut Vec<u8>) {
        match self {
            OutputData::Fp32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            OutputData::Bytes(v) => {
                for element in v {
                    out.extend((element.len() as u32).to_le_bytes());
                    out.extend(element);
                }
            }
        }
    }
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: OutputData,
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
/// FP32 is written as the shortest decimal that reads back as the same f32, and a non-finite
/// value as Triton writes it (`NaN`, `Infinity`, `-Infinity`); BYTES as strings.
pub fn encode_response(model: &str, version: &str, id: Option<&str>, outputs: &[(Output, bool)]) -> Encoded {
    let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).expect("a string serializes");
    let mut body = Vec::with_capacity(256);
    let mut binary = Vec::new();
    body.extend_from_slice(b"{\"model_name\":");
    string(&mut body, model);
    body.extend_from_slice(b",\"model_version\":");
    string(&mut body, version);
    if let Some(id) = id {
        body.extend_from_slice(b",\"id\":");
        string(&mut body, id);
    }
    body.extend_from_slice(b",\"outputs\":[");
    for (n, (o, as_binary)) in outputs.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"name\":");
        string(&mut body, &o.name);
        let datatype = o.data.datatype();
        body.extend_from_slice(format!(",\"datatype\":\"{datatype}\",\"shape\":").as_bytes());
        serde_json::to_writer(&mut body, &o.shape).expect("a shape serializes");
        if *as_binary {
            let start = binary.len();
            o.data.write_raw(&mut binary);
            let size = binary.len() - start;
            body.extend_from_slice(format!(",\"parameters\":{{\"binary_data_size\":{size}}}").as_bytes());
        } else {
            body.extend_from_slice(b",\"data\":[");
            match &o.data {
                OutputData::Fp32(v) => {
                    for (i, x) in v.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        match *x {
                            x if x.is_finite() => {
                                serde_json::to_writer(&mut body, &x).expect("a float serializes")
                            }
                            x if x.is_nan() => body.extend_from_slice(b"NaN"),
                            x if x > 0.0 => body.extend_from_slice(b"Infinity"),
                            _ => body.extend_from_slice(b"-Infinity"),
                        }
                    }
                }
                OutputData::Bytes(v) => {
                    for (i, element) in v.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        string(&mut body, &String::from_utf8_lossy(element));
                    }
                }
            }
            body.push(b']');
        }
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    if outputs.iter().all(|(_, b)| !b) {
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
    strings: Vec<Vec<u8>>,
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
        if MODE.get().raw_bytes {
            deserializer.deserialize_bytes(self)
        } else {
            deserializer.deserialize_any(self)
        }
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
        self.visit_bytes(v.as_bytes())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        let literal = v.strip_prefix(NON_FINITE.as_bytes()).filter(|_| MODE.get().non_finite);
        match literal {
            Some(b"NaN") => self.0.numbers.push(f64::NAN),
            Some(b"Infinity") => self.0.numbers.push(f64::INFINITY),
            Some(b"-Infinity") => self.0.numbers.push(f64::NEG_INFINITY),
            _ => self.0.strings.push(v.to_vec()),
        }
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
    fn non_finite_literals_are_numbers_outside_strings_and_text_inside_them() {
        let body = br#"{"id":"NaN","inputs":[{"name":"x","shape":[4],"datatype":"FP32","data":[NaN,Infinity,-Infinity,1]},{"name":"s","shape":[2],"datatype":"BYTES","data":["NaN","a \"Infinity\\"]}]}"#;
        let request = parse_request(body, None).unwrap();
        assert_eq!(request.id.as_deref(), Some("NaN"));
        let Elements::Numbers(n) = &request.input("x").unwrap().elements else { panic!() };
        assert!(n[0].is_nan() && n[1] == f64::INFINITY && n[2] == f64::NEG_INFINITY && n[3] == 1.0, "{n:?}");
        let strings = request.input("s").unwrap().bytes_elements().unwrap();
        assert_eq!(strings, [b"NaN".to_vec(), br#"a "Infinity\"#.to_vec()]);
        // A misspelt literal is still an error.
        let nan = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[Nan]}]}"#;
        assert!(parse_request(nan, None).unwrap_err().0.contains("not valid"));
    }

    /// The rewrite as one byte at a time: what the searching one must agree with.
    fn rewrite_byte_by_byte(json: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let (mut in_string, mut escaped, mut copied, mut i) = (false, false, 0, 0);
        while i < json.len() {
            let b = json[i];
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                i += 1;
                continue;
            }
            let literal = NON_FINITE_LITERALS.into_iter().find(|l| json[i..].starts_with(l));
            match (b, literal) {
                (b'"', _) => in_string = true,
                (_, Some(literal)) => {
                    let out = out.get_or_insert_with(Vec::new);
                    out.extend_from_slice(&json[copied..i]);
                    out.extend_from_slice(b"\"\\u0001\\u0002non-finite:");
                    out.extend_from_slice(literal);
                    out.push(b'"');
                    i += literal.len();
                    copied = i;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        let mut out = out?;
        out.extend_from_slice(&json[copied..]);
        Some(out)
    }

    #[test]
    fn the_non_finite_rewrite_agrees_with_a_byte_by_byte_scan() {
        let cases: [&[u8]; 8] = [
            br#"{"id":"x\\","data":[NaN,-Infinity]}"#,
            br#"["\\\"NaN",Infinity,"-Infinity\\",-NaN,--Infinity]"#,
            br#"[NaNInfinity-Infinity]"#,
            br#""unterminated \"#,
            br#"[1,-Inf,Na,"N","I"]"#,
            b"\"\\",
            b"-",
            b"",
        ];
        for case in cases {
            assert_eq!(
                rewrite_non_finite(case),
                rewrite_byte_by_byte(case),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // 20,000 short strings of the bytes that matter, drawn by a fixed generator (xorshift).
        let alphabet = b"\"\\NaIfinty-1,[ ";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 40;
            let text: Vec<u8> =
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            assert_eq!(
                rewrite_non_finite(&text),
                rewrite_byte_by_byte(&text),
                "{}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn json_bytes_elements_are_the_strings_own_bytes_or_base64_when_asked() {
        let mut body = br#"{"inputs":[{"name":"m","shape":[2],"datatype":"BYTES","data":[""#.to_vec();
        body.extend([0x47, 0x49, 0x46, 0xff, 0x00, 0x80]);
        body.extend(br#"","\u00e9"]}]}"#);
        let request = parse_request(&body, None).unwrap();
        let elements = request.input("m").unwrap().bytes_elements().unwrap();
        assert_eq!(elements, [vec![0x47, 0x49, 0x46, 0xff, 0x00, 0x80], "é".as_bytes().to_vec()]);

        let encoded = br#"{"inputs":[{"name":"m","shape":[1],"datatype":"BYTES","parameters":{"encoding":"base64"},"data":["R0lGODlh"]}]}"#;
        assert_eq!(
            parse_request(encoded, None).unwrap().inputs[0].bytes_elements().unwrap(),
            [b"GIF89a".to_vec()]
        );
        let not_base64 = br#"{"inputs":[{"name":"m","shape":[1],"datatype":"BYTES","parameters":{"encoding":"base64"},"data":["R0lG!"]}]}"#;
        assert!(parse_request(not_base64, None).unwrap_err().0.contains("element 0 is not base64"));
        let unknown = br#"{"inputs":[{"name":"m","shape":[1],"datatype":"BYTES","parameters":{"encoding":"hex"},"data":["00"]}]}"#;
        assert!(parse_request(unknown, None).unwrap_err().0.contains("may only be"));
        // Raw bytes are for strings: a non-UTF-8 body's numbers are refused with the reason.
        let mut mixed = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"m","shape":[1],"datatype":"BYTES","data":[""#.to_vec();
        mixed.extend([0xff, b'"', b']', b'}', b']', b'}']);
        assert!(parse_request(&mixed, None).unwrap_err().0.contains("not UTF-8"));
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

        let non_finite = Output {
            name: "t".into(),
            shape: vec![4],
            data: OutputData::Fp32(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1]),
        };
        let text = String::from_utf8(encode_response("m", "1", None, &[(non_finite, false)]).body).unwrap();
        assert!(text.contains(r#""data":[NaN,Infinity,-Infinity,0.1]"#), "{text}");

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
