//! MPNet checkpoints (all-mpnet-base-v2 and kin) mapped onto the one transformer encoder:
//! BERT's layer with other tensor names, no token types, RoBERTa's position ids (counted from
//! `pad_token_id + 1`), and a T5-style relative position bias shared by every layer and added
//! to the attention scores, which the encoder applies when the checkpoint carries it.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, PositionEmbeddingType};
use serde::Deserialize;

type Tensors = HashMap<String, Tensor>;

/// Where the mapped checkpoint keeps MPNet's `[buckets, heads]` relative attention bias.
pub const RELATIVE_BIAS: &str = "encoder.relative_attention_bias.weight";

#[derive(Debug, Clone, Deserialize)]
struct MpnetConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "one")]
    pad_token_id: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn one() -> usize {
    1
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

/// The BERT configuration and tensors equivalent to an MPNet checkpoint (plus
/// [`RELATIVE_BIAS`]).
pub fn to_bert(config_json: &[u8], tensors: Tensors) -> Result<(Config, Tensors), String> {
    let c: MpnetConfig =
        serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
    if c.hidden_act != "gelu" {
        return Err(format!(
            "config.json: hidden_act {:?} is not supported for mpnet (gelu)",
            c.hidden_act
        ));
    }
    let offset = c.pad_token_id + 1;
    if c.max_position_embeddings <= offset {
        return Err(format!(
            "config.json: max_position_embeddings {} leaves no positions after pad_token_id {}",
            c.max_position_embeddings, c.pad_token_id
        ));
    }
    let config = Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        intermediate_size: c.intermediate_size,
        hidden_act: candle_transformers::models::bert::HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: c.max_position_embeddings - offset,
        type_vocab_size: 1,
        initializer_range: 0.02,
        layer_norm_eps: c.layer_norm_eps,
        pad_token_id: c.pad_token_id,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("mpnet".into()),
    };
    let renames: [(&str, &str); 5] = [
        ("attention.attn.q.", "attention.self.query."),
        ("attention.attn.k.", "attention.self.key."),
        ("attention.attn.v.", "attention.self.value."),
        ("attention.attn.o.", "attention.output.dense."),
        ("attention.LayerNorm.", "attention.output.LayerNorm."),
    ];
    let mut out = Tensors::new();
    for (name, t) in tensors {
        let name = name.strip_prefix("mpnet.").unwrap_or(&name).to_string();
        let name = match name.strip_prefix("encoder.layer.") {
            Some(rest) => {
                let (layer, tail) = rest
                    .split_once('.')
                    .ok_or_else(|| format!("model.safetensors: unexpected tensor {name}"))?;
                let tail = renames
                    .iter()
                    .find_map(|(from, to)| tail.strip_prefix(from).map(|r| format!("{to}{r}")))
                    .unwrap_or_else(|| tail.to_string());
                format!("encoder.layer.{layer}.{tail}")
            }
            None => name,
        };
        out.insert(name, t);
    }
    // Real tokens' positions start at pad_token_id + 1: dropping the rows before makes the
    // encoder's positions 0, 1, ... land on the same embeddings (as for XLM-RoBERTa).
    let key = "embeddings.position_embeddings.weight";
    let positions = out
        .remove(key)
        .ok_or_else(|| format!("model.safetensors: no {key}"))?;
    let kept = positions
        .narrow(0, offset, c.max_position_embeddings - offset)
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("model.safetensors: {key}: {e}"))?;
    out.insert(key.into(), kept);
    // No token types in MPNet: a single zero type embedding adds nothing.
    let zeros =
        Tensor::zeros((1, c.hidden_size), DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    out.insert("embeddings.token_type_embeddings.weight".into(), zeros);
    if !out.contains_key(RELATIVE_BIAS) {
        return Err(format!("model.safetensors: no {RELATIVE_BIAS}"));
    }
    Ok((config, out))
}

#[cfg(test)]
mod tests {
    use super::*;

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
