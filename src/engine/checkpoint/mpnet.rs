//! MPNet checkpoints (all-mpnet-base-v2 and kin) mapped onto the one transformer encoder:
//! BERT's layer with other tensor names, no token types, RoBERTa's position ids (counted from
//! `pad_token_id + 1`), and a T5-style relative position bias shared by every layer and added
//! to the attention scores, which the encoder applies when the checkpoint carries it.

use serde::Deserialize;

use super::bert_family::parse;
use super::roberta::Shape;
use super::tensors::{
    Tensors, add_zero_token_types, drop_leading_positions, rename_layers, strip_prefix,
};
use crate::engine::blueprint::{Blueprint, RELATIVE_BIAS};
use crate::engine::kernels::Activation;

#[derive(Debug, Clone, Deserialize)]
struct MpnetConfig {
    #[serde(flatten)]
    shape: Shape,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_act() -> String {
    "gelu".into()
}

/// MPNet's relative positions saturate at this distance.
const MAX_DISTANCE: i64 = 128;

/// The bucket of a key `rel` tokens after (negative: before) the query, as MPNet (after T5)
/// assigns them: exact buckets for near tokens, logarithmic ones further out, half of the
/// buckets for each direction.
pub fn bucket(rel: i64, num_buckets: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -rel;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        ret += n;
    } else {
        let far = (n as f64 / max_exact as f64).ln()
            / (MAX_DISTANCE as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64;
        ret += (max_exact + far as i64).min(half - 1);
    }
    ret as usize
}

/// An MPNet checkpoint's blueprint: BERT's, plus its relative attention bias.
pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: MpnetConfig = parse(config_json)?;
    if c.hidden_act != "gelu" {
        return Err(format!(
            "config.json: hidden_act {:?} is not supported for mpnet (gelu)",
            c.hidden_act
        ));
    }
    Ok(c.shape
        .learned(Activation::GeluErf, c.shape.positions()?, 1, true))
}

/// Its tensors under BERT's names, plus [`RELATIVE_BIAS`].
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: MpnetConfig = parse(config_json)?;
    let renames: [(&str, &str); 5] = [
        ("attention.attn.q.", "attention.self.query."),
        ("attention.attn.k.", "attention.self.key."),
        ("attention.attn.v.", "attention.self.value."),
        ("attention.attn.o.", "attention.output.dense."),
        ("attention.LayerNorm.", "attention.output.LayerNorm."),
    ];
    let mut out = rename_layers(strip_prefix(tensors, "mpnet.")?, "encoder.layer.", &renames)?;
    drop_leading_positions(
        &mut out,
        c.shape.max_position_embeddings,
        c.shape.pad_token_id,
    )?;
    add_zero_token_types(&mut out, c.shape.hidden_size)?;
    if !out.contains_key(RELATIVE_BIAS) {
        return Err(format!("model.safetensors: no {RELATIVE_BIAS}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn config(act: &str, positions: usize) -> Vec<u8> {
        format!(
            r#"{{"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 8, "hidden_act": "{act}",
                "max_position_embeddings": {positions}, "pad_token_id": 1}}"#
        )
        .into_bytes()
    }

    fn positions(rows: usize) -> Tensors {
        let t = Tensor::zeros((rows, 4), DType::F32, &Device::Cpu).expect("zeros");
        Tensors::from([("mpnet.embeddings.position_embeddings.weight".to_string(), t)])
    }

    fn error(config_json: &[u8], t: Tensors) -> String {
        match blueprint(config_json).and_then(|_| tensors(config_json, t)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn refuses_what_the_encoder_cannot_run() {
        assert_eq!(
            error(&config("relu", 10), positions(10)),
            r#"config.json: hidden_act "relu" is not supported for mpnet (gelu)"#
        );
        assert_eq!(
            error(&config("gelu", 2), positions(2)),
            "config.json: max_position_embeddings 2 leaves no positions after pad_token_id 1"
        );
        assert_eq!(
            error(&config("gelu", 10), positions(10)),
            "model.safetensors: no encoder.relative_attention_bias.weight"
        );
    }

    #[test]
    fn maps_names_and_drops_the_padding_positions() {
        let mut tensors = positions(10);
        let bias = Tensor::zeros((32, 2), DType::F32, &Device::Cpu).expect("zeros");
        tensors.insert(format!("mpnet.{RELATIVE_BIAS}"), bias.clone());
        tensors.insert("mpnet.encoder.layer.0.attention.attn.q.weight".into(), bias);
        let c = blueprint(&config("gelu", 10)).expect("blueprint");
        let out = super::tensors(&config("gelu", 10), tensors).expect("mapped");
        assert_eq!(c.max_positions(), 8);
        let dims = |name: &str| out.get(name).map(|t| t.dims().to_vec());
        assert_eq!(
            dims("embeddings.position_embeddings.weight"),
            Some(vec![8, 4])
        );
        assert_eq!(
            dims("embeddings.token_type_embeddings.weight"),
            Some(vec![1, 4])
        );
        assert!(out.contains_key("encoder.layer.0.attention.self.query.weight"));
        assert!(out.contains_key(RELATIVE_BIAS));
    }

    #[test]
    fn buckets_match_transformers() {
        // From transformers' MPNetEncoder.relative_position_bucket(num_buckets=32,
        // max_distance=128), rel = key position - query position.
        let want = [
            (-600, 15),
            (-200, 15),
            (-129, 15),
            (-128, 15),
            (-127, 15),
            (-64, 14),
            (-33, 12),
            (-32, 12),
            (-31, 11),
            (-17, 10),
            (-16, 10),
            (-15, 9),
            (-12, 9),
            (-11, 8),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (9, 24),
            (11, 24),
            (12, 25),
            (15, 25),
            (16, 26),
            (17, 26),
            (31, 27),
            (32, 28),
            (33, 28),
            (64, 30),
            (127, 31),
            (128, 31),
            (129, 31),
            (200, 31),
            (600, 31),
        ];
        for (rel, b) in want {
            assert_eq!(bucket(rel, 32), b, "rel {rel}");
        }
    }
}
