//! Renaming a checkpoint's tensors into BERT's names: prefixes, per-layer names, a zero
//! token-type row for models without token types, and RoBERTa-style position offsets.

use candle_core::{DType, Device, Tensor};

use crate::engine::blueprint::Blueprint;

pub use crate::engine::stored::Tensors;

/// The names transformers gives tensors as it loads a checkpoint (`_fix_state_dict_key_on_load`):
/// a LayerNorm's `gamma` and `beta`, as Google's TensorFlow conversions of BERT and many small
/// BERTs still name them, are its `weight` and `bias`. A checkpoint holding both names of one
/// tensor is refused, naming it: which one was meant cannot be told.
pub(super) fn as_transformers_loads(tensors: Tensors) -> Result<Tensors, String> {
    let mut out = Tensors::with_capacity(tensors.len());
    for (name, t) in tensors {
        let key = match (
            name.strip_suffix("LayerNorm.gamma"),
            name.strip_suffix("LayerNorm.beta"),
        ) {
            (Some(stem), _) => format!("{stem}LayerNorm.weight"),
            (_, Some(stem)) => format!("{stem}LayerNorm.bias"),
            _ => name.clone(),
        };
        // A renamed tensor meets its other name, whichever came first.
        if out.insert(key.clone(), t).is_some() {
            return Err(format!(
                "model.safetensors: {key} is there twice, under its own name and as {}; keep one",
                if key.ends_with(".weight") {
                    "LayerNorm.gamma"
                } else {
                    "LayerNorm.beta"
                }
            ));
        }
    }
    Ok(out)
}

/// The tensors with `prefix` taken off the names that have it. A checkpoint holding a tensor
/// both with and without the prefix (`bert.pooler.dense.weight` and `pooler.dense.weight`)
/// is refused: which one the model means cannot be told, and picking one would run other
/// weights than the folder's author meant.
pub(super) fn strip_prefix(tensors: Tensors, prefix: &str) -> Result<Tensors, String> {
    let mut out = Tensors::with_capacity(tensors.len());
    for (name, t) in tensors {
        let key = match name.strip_prefix(prefix) {
            Some(rest) => rest.to_string(),
            None => name.clone(),
        };
        if out.insert(key.clone(), t).is_some() {
            return Err(format!(
                "model.safetensors: {key} is there both as {prefix}{key} and without the prefix; keep one"
            ));
        }
    }
    Ok(out)
}

/// Renames the tensors of layer `i` under `layers` (e.g. `transformer.layer.`) to BERT's
/// `encoder.layer.i.`, each name's tail through the first matching `(from, to)` prefix.
pub(super) fn rename_layers(
    tensors: Tensors,
    layers: &str,
    renames: &[(&str, &str)],
) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    for (name, t) in tensors {
        let name = match name.strip_prefix(layers) {
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
    Ok(out)
}

/// For checkpoints without token types: a single zero type embedding adds nothing.
pub(super) fn add_zero_token_types(tensors: &mut Tensors, hidden: usize) -> Result<(), String> {
    let zeros = Tensor::zeros((1, hidden), DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    tensors.insert("embeddings.token_type_embeddings.weight".into(), zeros);
    Ok(())
}

/// For families whose layers have no bias (or norms no shift): a zero `name` of `len` values,
/// unless the checkpoint has one after all.
pub(super) fn zeros_unless_present(
    tensors: &mut Tensors,
    name: &str,
    len: usize,
) -> Result<(), String> {
    if !tensors.contains_key(name) {
        let zeros = Tensor::zeros(len, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
        tensors.insert(name.to_string(), zeros);
    }
    Ok(())
}

/// Renames the tensors whose names start with one of `renames`' prefixes (outside the layers).
pub(super) fn rename(tensors: &mut Tensors, renames: &[(&str, &str)]) {
    let names: Vec<String> = tensors.keys().cloned().collect();
    for name in names {
        if let Some(new) = renames
            .iter()
            .find_map(|(from, to)| name.strip_prefix(from).map(|r| format!("{to}{r}")))
            && let Some(t) = tensors.remove(&name)
        {
            tensors.insert(new, t);
        }
    }
}

/// Joins tensors `parts` (each `[rows, cols]`) into one `[Σ rows, cols]` tensor `into`, in
/// order: a fused projection from its parts (a gate before the values it scales).
pub(super) fn fuse(tensors: &mut Tensors, parts: &[String], into: &str) -> Result<(), String> {
    let mut taken = Vec::with_capacity(parts.len());
    for p in parts {
        taken.push(
            tensors
                .remove(p)
                .ok_or_else(|| format!("model.safetensors: no tensor {p}"))?,
        );
    }
    let fused = Tensor::cat(&taken, 0).map_err(|e| format!("model.safetensors: {into}: {e}"))?;
    tensors.insert(into.to_string(), fused);
    Ok(())
}

/// Splits `name` (`[2n, cols]`) into its halves, first then second, under `first`/`second`.
pub(super) fn halve(
    tensors: &mut Tensors,
    name: &str,
    first: &str,
    second: &str,
) -> Result<(), String> {
    let t = tensors
        .remove(name)
        .ok_or_else(|| format!("model.safetensors: no tensor {name}"))?;
    let rows = t.dims().first().copied().unwrap_or(0);
    let half = |start| {
        t.narrow(0, start, rows / 2)
            .and_then(|t| t.contiguous())
            .map_err(|e| format!("model.safetensors: {name}: {e}"))
    };
    tensors.insert(first.to_string(), half(0)?);
    tensors.insert(second.to_string(), half(rows / 2)?);
    Ok(())
}

/// The layer names transformers gives BERT-style rotary encoders natively (its NomicBERT and
/// GTE: `layers.N.self_attn.q_proj`, `mlp.gate_proj`, `post_attention_layernorm`, ...) as
/// the encoder's, the gate's rows before the values' in one fused up projection.
pub(super) fn from_transformers_layers(tensors: Tensors, layers: usize) -> Result<Tensors, String> {
    let renames = [
        ("self_attn.q_proj.", "attention.self.query."),
        ("self_attn.k_proj.", "attention.self.key."),
        ("self_attn.v_proj.", "attention.self.value."),
        ("self_attn.o_proj.", "attention.output.dense."),
        ("post_attention_layernorm.", "attention.output.LayerNorm."),
        ("mlp.down_proj.", "output.dense."),
        ("post_mlp_layernorm.", "output.LayerNorm."),
    ];
    let mut out = rename_layers(tensors, "layers.", &renames)?;
    fuse_gate_up(&mut out, layers)?;
    Ok(out)
}

/// Every layer's `mlp.gate_proj` and `mlp.up_proj` (transformers' names, under the encoder's
/// layer prefix) fused into one up projection, the gate's rows first.
fn fuse_gate_up(tensors: &mut Tensors, layers: usize) -> Result<(), String> {
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        fuse(
            tensors,
            &[
                format!("{p}.mlp.gate_proj.weight"),
                format!("{p}.mlp.up_proj.weight"),
            ],
            &format!("{p}.intermediate.dense.weight"),
        )?;
    }
    Ok(())
}

/// The decoders' checkpoints (Qwen3, Gemma 3) under the encoder's names: `model.` and a
/// language-model head dropped, each layer's attention and feed-forward tensors renamed (with
/// `norms`, the family's own norm names), the gate and up projections fused, the word table
/// and final norm renamed, zero token types, and a zero bias for every linear without one.
pub(super) fn from_decoder(
    tensors: Tensors,
    norms: &[(&str, &str)],
    blueprint: &Blueprint,
) -> Result<Tensors, String> {
    let heads = blueprint.heads();
    let mut tensors = strip_prefix(tensors, "model.")?;
    tensors.remove("lm_head.weight");
    let mut renames = norms.to_vec();
    renames.extend([
        ("self_attn.q_proj.", "attention.self.query."),
        ("self_attn.k_proj.", "attention.self.key."),
        ("self_attn.v_proj.", "attention.self.value."),
        ("self_attn.q_norm.", "attention.self.q_norm."),
        ("self_attn.k_norm.", "attention.self.k_norm."),
        ("self_attn.o_proj.", "attention.output.dense."),
        ("mlp.down_proj.", "output.dense."),
    ]);
    let mut out = rename_layers(tensors, "layers.", &renames)?;
    rename(
        &mut out,
        &[
            ("embed_tokens.", "embeddings.word_embeddings."),
            ("norm.", "final_norm."),
        ],
    );
    add_zero_token_types(&mut out, blueprint.hidden)?;
    fuse_gate_up(&mut out, blueprint.layers)?;
    for l in 0..blueprint.layers {
        for (name, len) in [
            ("attention.self.query", heads.q_width()),
            ("attention.self.key", heads.kv_width()),
            ("attention.self.value", heads.kv_width()),
            ("attention.output.dense", blueprint.hidden),
            ("intermediate.dense", 2 * blueprint.intermediate),
            ("output.dense", blueprint.hidden),
        ] {
            zeros_unless_present(&mut out, &format!("encoder.layer.{l}.{name}.bias"), len)?;
        }
    }
    Ok(out)
}

/// RoBERTa-style checkpoints number real tokens' positions from `pad_token_id + 1`; dropping
/// the position rows before that makes the encoder's positions 0, 1, ... land on the same
/// embeddings. (Padding's own position row only ever served padding, which never reaches the
/// encoder.) Returns the positions left.
pub(super) fn drop_leading_positions(
    tensors: &mut Tensors,
    max_position_embeddings: usize,
    pad_token_id: usize,
) -> Result<usize, String> {
    let offset = pad_token_id + 1;
    if max_position_embeddings <= offset {
        return Err(format!(
            "config.json: max_position_embeddings {max_position_embeddings} leaves no positions after pad_token_id {pad_token_id}"
        ));
    }
    let key = "embeddings.position_embeddings.weight";
    let positions = tensors
        .remove(key)
        .ok_or_else(|| format!("model.safetensors: no {key}"))?;
    let left = max_position_embeddings - offset;
    let kept = positions
        .narrow(0, offset, left)
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("model.safetensors: {key}: {e}"))?;
    tensors.insert(key.into(), kept);
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(n: usize) -> Tensor {
        Tensor::zeros(n, DType::F32, &Device::Cpu).expect("zeros")
    }

    #[test]
    fn a_prefix_is_stripped_and_a_collision_refused() {
        let t: Tensors = [
            ("bert.a".to_string(), zeros(1)),
            ("b".to_string(), zeros(1)),
        ]
        .into();
        let mut names: Vec<String> = strip_prefix(t, "bert.")
            .expect("no collision")
            .into_keys()
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let t: Tensors = [
            ("bert.pooler.dense.weight".to_string(), zeros(1)),
            ("pooler.dense.weight".to_string(), zeros(1)),
        ]
        .into();
        assert_eq!(
            strip_prefix(t, "bert.").err().as_deref(),
            Some(
                "model.safetensors: pooler.dense.weight is there both as bert.pooler.dense.weight and without the prefix; keep one"
            )
        );
    }
}

#[cfg(test)]
mod loaded_names {
    use super::*;

    fn named(names: &[&str]) -> Tensors {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Tensor::zeros(2, DType::F32, &Device::Cpu).expect("t"),
                )
            })
            .collect()
    }

    #[test]
    fn layer_norm_gamma_and_beta_are_read_as_weight_and_bias() {
        let t = as_transformers_loads(named(&[
            "cls.predictions.transform.LayerNorm.gamma",
            "cls.predictions.transform.LayerNorm.beta",
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.0.attention.output.LayerNorm.beta",
            "gamma_scale",
        ]))
        .expect("renamed");
        let mut names: Vec<&String> = t.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bert.embeddings.LayerNorm.weight",
                "bert.encoder.layer.0.attention.output.LayerNorm.bias",
                "cls.predictions.transform.LayerNorm.bias",
                "cls.predictions.transform.LayerNorm.weight",
                "gamma_scale",
            ]
        );
        let twice = as_transformers_loads(named(&["x.LayerNorm.gamma", "x.LayerNorm.weight"]))
            .expect_err("both names");
        assert_eq!(
            twice,
            "model.safetensors: x.LayerNorm.weight is there twice, under its own name and as LayerNorm.gamma; keep one"
        );
    }
}
