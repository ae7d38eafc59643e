//! Compact vectors: a request's `embedding_types` (Cohere's names) and what each makes of a
//! float vector, with sentence-transformers' `quantize_embeddings` semantics (6.x):
//!
//! - `int8` / `uint8`: each value of the **unit** vector placed in 256 equal steps of the
//!   fixed range [-1, 1] (`floor((x + 1) / (2 / 255))`, clipped to 0..=255; int8 is that
//!   minus 128). The range is fixed, not taken from the request's batch, so a text's int8
//!   vector is the same alone or in any batch, and two requests' vectors compare. A vector the
//!   request left unnormalised is normalised first (the range is a unit vector's).
//! - `binary` / `ubinary`: one bit per value, set where the value is above zero, eight to a
//!   byte, the first value in the highest bit (numpy's `packbits`); a width that is not a
//!   multiple of 8 ends with zero bits. `binary` is each byte minus 128, as a signed byte.
//!
//! The arithmetic is f32, step for step as numpy does it, so a float vector quantizes to the
//! same integers here as in `quantize_embeddings(v, precision, ranges=[[-1]*d, [1]*d])`.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::error::RequestError;
use crate::engine::pool::l2_normalize;

/// One of `embedding_types`' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    /// The float vector, as without `embedding_types`.
    Float,
    /// One signed byte per value.
    Int8,
    /// One unsigned byte per value.
    Uint8,
    /// Sign bits packed eight to a signed byte.
    Binary,
    /// Sign bits packed eight to an unsigned byte.
    Ubinary,
}

const NAMES: [(&str, EmbeddingType); 5] = [
    ("float", EmbeddingType::Float),
    ("int8", EmbeddingType::Int8),
    ("uint8", EmbeddingType::Uint8),
    ("binary", EmbeddingType::Binary),
    ("ubinary", EmbeddingType::Ubinary),
];

impl EmbeddingType {
    /// Its name in requests and answers.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("float", |(n, _)| n)
    }
}

/// `embedding_types`: a name or a list of distinct names; absent or null means floats only.
pub fn embedding_types(value: Option<Value>) -> Result<Vec<EmbeddingType>, RequestError> {
    let refuse = |what: String| RequestError::InvalidEmbeddingTypes(what);
    let items = match value {
        None | Some(Value::Null) => return Ok(vec![EmbeddingType::Float]),
        Some(Value::String(s)) => vec![Value::String(s)],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(refuse("is an empty list".into()));
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(refuse(format!("is {other}"))),
    };
    let mut types = Vec::with_capacity(items.len());
    for item in items {
        let found = item
            .as_str()
            .and_then(|s| NAMES.iter().find(|(n, _)| *n == s))
            .map(|(_, t)| *t);
        match found {
            Some(t) if types.contains(&t) => {
                return Err(refuse(format!("lists {item} twice")));
            }
            Some(t) => types.push(t),
            None => return Err(refuse(format!("has {item}, which is not a type"))),
        }
    }
    Ok(types)
}

/// A vector in one of the types, as an answer writes it.
#[derive(Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Compact<'a> {
    /// Floats.
    Float(&'a [f32]),
    /// `int8`, `binary`.
    Signed(Vec<i8>),
    /// `uint8`, `ubinary`.
    Unsigned(Vec<u8>),
    /// `encoding_format: base64`: the little-endian bytes (f32 for floats, one per value or
    /// per eight bits otherwise).
    Base64(String),
}

/// Values by type name, written as a JSON object in the order asked.
pub struct InOrder<T>(pub Vec<(&'static str, T)>);

impl<T: Serialize> Serialize for InOrder<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// `v` as `ty` (see the module's rules); `unit` says whether `v` is already of unit length.
pub fn compact(v: &[f32], unit: bool, ty: EmbeddingType, base64: bool) -> Compact<'_> {
    let c = match ty {
        EmbeddingType::Float => Compact::Float(v),
        EmbeddingType::Int8 => Compact::Signed(steps(v, unit).map(|q| (q - 128) as i8).collect()),
        EmbeddingType::Uint8 => Compact::Unsigned(steps(v, unit).map(|q| q as u8).collect()),
        EmbeddingType::Binary => Compact::Signed(
            packed_bits(v)
                .iter()
                .map(|b| b.wrapping_sub(128) as i8)
                .collect(),
        ),
        EmbeddingType::Ubinary => Compact::Unsigned(packed_bits(v)),
    };
    if !base64 {
        return c;
    }
    let bytes: Vec<u8> = match c {
        Compact::Float(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Compact::Signed(v) => v.iter().map(|&x| x as u8).collect(),
        Compact::Unsigned(v) => v,
        Compact::Base64(s) => return Compact::Base64(s),
    };
    Compact::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Each value's step in 0..=255 over [-1, 1], of the unit vector.
fn steps(v: &[f32], unit: bool) -> impl Iterator<Item = i32> + '_ {
    let owned = (!unit).then(|| {
        let mut o = v.to_vec();
        l2_normalize(&mut o);
        o
    });
    // numpy's float32 `(ranges[1] - ranges[0]) / 255`.
    let step = (1f32 - (-1f32)) / 255f32;
    (0..v.len()).map(move |i| {
        let x = owned.as_ref().map_or(v[i], |o| o[i]);
        // `(x - start) / step`, floored and clipped; NaN never reaches here (the engine
        // refuses non-finite vectors) but would clip to 0.
        ((x - (-1f32)) / step).floor().clamp(0.0, 255.0) as i32
    })
}

/// numpy's `packbits(v > 0, axis=-1)`: the first value in the highest bit, zero-padded.
fn packed_bits(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &x)| b | (u8::from(x > 0.0) << (7 - i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_read_and_refused_by_name() {
        use EmbeddingType::*;
        assert_eq!(embedding_types(None).unwrap(), vec![Float]);
        assert_eq!(
            embedding_types(Some(Value::String("ubinary".into()))).unwrap(),
            vec![Ubinary]
        );
        assert_eq!(
            embedding_types(Some(serde_json::json!(["int8", "float", "binary"]))).unwrap(),
            vec![Int8, Float, Binary]
        );
        let message = |v: Value| embedding_types(Some(v)).unwrap_err().to_string();
        let list = "send one of \"float\", \"int8\", \"uint8\", \"binary\", \"ubinary\" or a list of them, each at most once";
        assert_eq!(
            message(serde_json::json!([])),
            format!("`embedding_types` is an empty list; {list}")
        );
        assert_eq!(
            message(serde_json::json!(["int4"])),
            format!("`embedding_types` has \"int4\", which is not a type; {list}")
        );
        assert_eq!(
            message(serde_json::json!(["int8", "int8"])),
            format!("`embedding_types` lists \"int8\" twice; {list}")
        );
        assert_eq!(
            message(serde_json::json!(8)),
            format!("`embedding_types` is 8; {list}")
        );
        assert_eq!(
            message(serde_json::json!([1])),
            format!("`embedding_types` has 1, which is not a type; {list}")
        );
    }

    #[test]
    fn int8_and_uint8_use_the_fixed_unit_range() {
        let v = [-1.0, -0.5, 0.0, 0.003, 0.5, 1.0];
        // floor((x + 1) / (2 / 255)): 0, 63, 127, 127, 191, and 254 for 1.0, whose quotient
        // falls just under 255 in f32 (numpy's answer too).
        assert_eq!(
            compact(&v, true, EmbeddingType::Uint8, false),
            Compact::Unsigned(vec![0, 63, 127, 127, 191, 254])
        );
        assert_eq!(
            compact(&v, true, EmbeddingType::Int8, false),
            Compact::Signed(vec![-128, -65, -1, -1, 63, 126])
        );
        // Not unit: normalised first, so [3, 4] is [0.6, 0.8].
        assert_eq!(
            compact(&[3.0, 4.0], false, EmbeddingType::Uint8, false),
            Compact::Unsigned(vec![203, 229])
        );
    }

    #[test]
    fn bits_pack_high_first_and_pad_with_zeros() {
        let v = [1.0, -1.0, 0.0, 2.0, 0.1, -0.1, -3.0, 0.5, 0.2, -0.2];
        // 1001_1001, then 10 padded: 1000_0000.
        assert_eq!(
            compact(&v, true, EmbeddingType::Ubinary, false),
            Compact::Unsigned(vec![0b1001_1001, 0b1000_0000])
        );
        assert_eq!(
            compact(&v, true, EmbeddingType::Binary, false),
            Compact::Signed(vec![(0b1001_1001 - 128) as i8, 0])
        );
    }

    /// sentence-transformers' `quantize_embeddings` on its own MiniLM vectors (the fixed
    /// ranges for int8 and uint8), made by `tests/fixtures/reference/generate_compact.py`:
    /// the same bytes from the same floats.
    #[test]
    fn sentence_transformers_quantizes_the_same_floats_to_the_same_bytes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");
        let read = |name: &str| -> Value {
            let text = std::fs::read_to_string(format!("{dir}{name}")).expect("fixture");
            serde_json::from_str(&text).expect("fixture JSON")
        };
        let (floats, reference) = (read("minilm-vectors.json"), read("minilm-compact.json"));
        let types = [
            ("int8", EmbeddingType::Int8),
            ("uint8", EmbeddingType::Uint8),
            ("binary", EmbeddingType::Binary),
            ("ubinary", EmbeddingType::Ubinary),
        ];
        let texts = reference["texts"].as_array().expect("texts").len();
        assert!(texts >= 64, "{texts} texts");
        for i in 0..texts {
            let v: Vec<f32> = floats["vectors"][i]
                .as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect();
            for (name, ty) in types {
                let Compact::Base64(ours) = compact(&v, true, ty, true) else {
                    panic!("not base64");
                };
                assert_eq!(ours, reference[name][i], "text {i}, {name}");
            }
        }
    }

    #[test]
    fn several_types_are_written_in_the_order_asked() {
        let v = [0.6, -0.8];
        let pairs = [
            EmbeddingType::Ubinary,
            EmbeddingType::Float,
            EmbeddingType::Int8,
        ]
        .map(|t| (t.name(), compact(&v, true, t, false)));
        assert_eq!(
            serde_json::to_string(&InOrder(pairs.into())).unwrap(),
            r#"{"ubinary":[128],"float":[0.6,-0.8],"int8":[75,-103]}"#
        );
    }

    #[test]
    fn base64_carries_the_bytes_of_the_type() {
        let b64 = |c: Compact| match c {
            Compact::Base64(s) => base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
            other => panic!("not base64: {other:?}"),
        };
        assert_eq!(
            b64(compact(&[-1.0, 1.0], true, EmbeddingType::Int8, true)),
            vec![0x80, 0x7e]
        );
        assert_eq!(
            b64(compact(&[1.0, 0.5], true, EmbeddingType::Float, true)),
            [1f32.to_le_bytes(), 0.5f32.to_le_bytes()].concat()
        );
    }
}
