//! What BAAI's bge-m3 folder adds to an embedder: FlagEmbedding's `colbert_linear.pt` and
//! `sparse_linear.pt` beside the sentence-transformers files, PyTorch state dicts (zip format)
//! of one `nn.Linear` each, read with candle's pickle reader (no Python) and stored in the
//! package as safetensors: the heads of its token vectors and term weights.

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{
    Dense, DenseActivation, LateInteraction, LateSimilarity, OutputHeads, OutputName, TokenWeights,
};
use super::{HfConfig, read_json, unusable};

/// Where the package keeps the heads.
pub(crate) const COLBERT: &str = "colbert_linear.safetensors";
pub(crate) const SPARSE: &str = "sparse_linear.safetensors";

/// The heads of a bge-m3 folder, as the manifest names them, and their files' bytes.
pub(crate) struct Heads {
    pub outputs: Vec<OutputName>,
    pub output_heads: OutputHeads,
    pub late_interaction: LateInteraction,
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// The special tokens `tokenizer_config.json` names.
#[derive(Deserialize, Default)]
struct Specials {
    cls_token: Option<Name>,
    eos_token: Option<Name>,
    pad_token: Option<Name>,
    unk_token: Option<Name>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Name {
    Plain(String),
    Added { content: String },
}

/// The heads when the folder has both `.pt` files (none when it has neither; one alone is
/// refused). `hidden` is the encoder's width, `max_len` the texts' length.
pub(crate) fn heads(
    dir: &Path,
    config: &HfConfig,
    hidden: usize,
    max_len: usize,
) -> Result<Option<Heads>, PackageError> {
    let (colbert, sparse) = (dir.join("colbert_linear.pt"), dir.join("sparse_linear.pt"));
    match (colbert.exists(), sparse.exists()) {
        (false, false) => return Ok(None),
        (true, true) => {}
        (c, _) => {
            return Err(unusable(format!(
                "the folder has {} but not {}: bge-m3 ships both (FlagEmbedding's heads)",
                if c {
                    "colbert_linear.pt"
                } else {
                    "sparse_linear.pt"
                },
                if c {
                    "sparse_linear.pt"
                } else {
                    "colbert_linear.pt"
                },
            )));
        }
    }
    let (colbert_out, colbert_bytes) = linear(&colbert, hidden, None)?;
    let (_, sparse_bytes) = linear(&sparse, hidden, Some(1))?;
    let vocabulary = config
        .vocab_size
        .ok_or_else(|| unusable("config.json has no vocab_size"))?;
    let dense = |path: &str, outputs| Dense {
        path: path.to_string(),
        inputs: hidden,
        outputs,
        bias: true,
        activation: DenseActivation::Identity,
    };
    Ok(Some(Heads {
        outputs: vec![
            OutputName::Dense,
            OutputName::Sparse,
            OutputName::MultiVector,
        ],
        output_heads: OutputHeads {
            sparse: Some(TokenWeights {
                linear: dense(SPARSE, 1),
                skip: special_ids(dir)?,
                vocabulary,
            }),
            multi_vector: Some(dense(COLBERT, colbert_out)),
        },
        // FlagEmbedding's: both sides cut at the model's length, no prompts or expansion,
        // [CLS] without a vector, scored by the mean of MaxSim over the query's vectors.
        late_interaction: LateInteraction {
            query_length: max_len,
            document_length: max_len,
            query_expansion: None,
            skiplist: Vec::new(),
            similarity: LateSimilarity::Meanmaxsim,
            drop_first: true,
        },
        files: vec![(COLBERT, colbert_bytes), (SPARSE, sparse_bytes)],
    }))
}

/// The `nn.Linear` state dict at `path` (`weight` [outputs, hidden], `bias` [outputs]) as
/// safetensors bytes (`linear.weight`, `linear.bias`, f32), and its outputs.
fn linear(
    path: &Path,
    hidden: usize,
    outputs: Option<usize>,
) -> Result<(usize, Vec<u8>), PackageError> {
    let shown = path.display();
    let tensors = candle_core::pickle::read_all(path).map_err(|e| {
        unusable(format!(
            "{shown}: cannot read it as a PyTorch state dict (torch.save's zip format): {e}"
        ))
    })?;
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
                unusable(format!(
                    "{shown}: no tensor {name:?} (it has {names:?}); an nn.Linear's state dict has weight and bias"
                ))
            })
    };
    let (weight, bias) = (get("weight")?, get("bias")?);
    let dims = weight.dims().to_vec();
    let out = match dims[..] {
        [o, i] if i == hidden && outputs.is_none_or(|want| want == o) => o,
        _ => {
            return Err(unusable(format!(
                "{shown}: weight is {dims:?}; it must be [{}, {hidden}] (outputs × the encoder's width)",
                outputs.map_or("outputs".to_string(), |o| o.to_string())
            )));
        }
    };
    if bias.dims() != [out] {
        return Err(unusable(format!(
            "{shown}: bias is {:?}; it must be [{out}]",
            bias.dims()
        )));
    }
    let floats = |t: &candle_core::Tensor| -> Result<Vec<f32>, PackageError> {
        t.to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| unusable(format!("{shown}: {e}")))
    };
    let (w, b) = (floats(weight)?, floats(bias)?);
    if let Some(x) = w.iter().chain(&b).find(|x| !x.is_finite()) {
        return Err(unusable(format!("{shown}: holds the non-finite value {x}")));
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (wb, bb) = (bytes(&w), bytes(&b));
    let views = [
        (
            "linear.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![out, hidden], &wb),
        ),
        (
            "linear.bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![out], &bb),
        ),
    ];
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = views
        .into_iter()
        .map(|(n, v)| v.map(|v| (n, v)))
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(format!("{shown}: {e}")))?;
    let serialized =
        safetensors::serialize(views, None).map_err(|e| unusable(format!("{shown}: {e}")))?;
    Ok((out, serialized))
}

/// The ids FlagEmbedding gives no term weight: the tokenizer's CLS, EOS, PAD and UNK tokens.
fn special_ids(dir: &Path) -> Result<Vec<u32>, PackageError> {
    let config = dir.join("tokenizer_config.json");
    let s: Specials = match config.exists() {
        true => read_json(&config)?,
        false => Specials::default(),
    };
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| unusable(format!("tokenizer.json: {e}")))?;
    let mut ids: Vec<u32> = [s.cls_token, s.eos_token, s.pad_token, s.unk_token]
        .into_iter()
        .flatten()
        .filter_map(|n| {
            tokenizer.token_to_id(match &n {
                Name::Plain(t) | Name::Added { content: t } => t,
            })
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
