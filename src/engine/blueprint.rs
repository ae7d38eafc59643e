//! What a checkpoint family makes of the one encoder: its sizes and the parts it picks
//! (positions, where the norms sit, the feed-forward block, an attention window), as plain
//! data. [`super::checkpoint`] reads it from a family's `config.json`; [`super::encoder`]
//! builds the layers it describes. A new family is mostly a new way to fill this in.

use super::kernels::Activation;

/// The shape and parts of one encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Blueprint {
    /// Rows of the word embedding table.
    pub vocab: usize,
    /// Width of a token vector.
    pub hidden: usize,
    /// Query heads, each [`Blueprint::head_dim`] wide.
    pub heads: usize,
    /// Key and value heads: `heads`, or fewer under grouped-query attention, where each
    /// serves `heads / kv_heads` query heads side by side (Qwen3, Gemma 3).
    pub kv_heads: usize,
    /// Values per head: `hidden / heads`, or the family's own (Qwen3-Embedding-0.6B's 16
    /// heads are 128 wide at a hidden size of 1,024).
    pub head_dim: usize,
    /// Whether a token attends only to itself and the tokens before it (decoders such as
    /// Qwen3), rather than to its whole text.
    pub causal: bool,
    /// Whether each query and key head is RMS-normalised (its own weights, shared by the
    /// heads) before the rotary embedding (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// LayerNorm or RMSNorm, for every norm of the model.
    pub norm_kind: NormKind,
    /// Whether the embeddings are normalised before the first layer (the BERT family) or
    /// enter it as they are (decoders).
    pub embedding_norm: bool,
    /// Transformer layers.
    pub layers: usize,
    /// Width of the feed-forward block's inner layer (of each half, when gated).
    pub intermediate: usize,
    /// The LayerNorms' epsilon.
    pub eps: f32,
    /// Rows of the token type table (1 for models without token types: a zero row).
    pub type_vocab: usize,
    /// How a token's position enters the model.
    pub positions: Positions,
    /// Where each layer normalises.
    pub norm: Placement,
    /// The feed-forward block.
    pub mlp: Mlp,
    /// Layers that attend only to nearby tokens, when the family has them.
    pub window: Option<Window>,
}

/// How positions enter the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// A learned row per position added to the embeddings (BERT, DistilBERT, XLM-RoBERTa),
    /// `max` of them; with `relative_bias`, MPNet's bias table is added to the attention scores
    /// too.
    Learned {
        /// Positions the table holds.
        max: usize,
        /// MPNet's relative attention bias (tensor [`RELATIVE_BIAS`]).
        relative_bias: bool,
    },
    /// Rotary embeddings applied to queries and keys in every layer.
    Rotary(Rotary),
}

/// Where the checkpoint mappers put MPNet's `[buckets, heads]` relative attention bias.
pub const RELATIVE_BIAS: &str = "encoder.relative_attention_bias.weight";

/// Rotary position embeddings as GPT-NeoX and the BERT descendants apply them: the first
/// `dims` values of each head split in two halves rotated against each other
/// (`rotate_half`), frequency `base^(-2i/dims) / divisor` for pair `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotary {
    /// The base of the frequencies (already scaled, for families that scale it).
    pub base: f64,
    /// The base of the layers that attend within a window, when it differs (ModernBERT).
    pub local_base: Option<f64>,
    /// Values of each head that rotate (the head width unless the family rotates a part).
    pub dims: usize,
    /// What every frequency is divided by (1, but for NTK scaling).
    pub divisor: f64,
    /// Longest text the model takes (its trained or extended context).
    pub max: usize,
}

/// What a norm computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * weight + bias` (the BERT family).
    Layer,
    /// `x / sqrt(mean(x²) + eps) * weight`, no bias (Qwen3; Gemma's `1 + weight` is folded
    /// into the weight at load).
    Rms,
}

/// Where a layer normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After each residual add (BERT and its descendants): `x = norm(x + f(x))`.
    Post,
    /// Before each block, with a norm after the last layer (ModernBERT): `x = x + f(norm(x))`.
    /// The first layer's attention may take its input as it is.
    Pre {
        /// Whether layer 0 has an attention norm (ModernBERT's is the identity).
        first_attention_norm: bool,
    },
    /// Before and after each block, with a norm after the last layer (Gemma 3):
    /// `x = x + norm₂(f(norm₁(x)))`.
    Sandwich,
}

impl Placement {
    /// Whether each block's input is normalised (and the last layer's output).
    pub fn before_blocks(self) -> bool {
        !matches!(self, Placement::Post)
    }
}

/// A layer's feed-forward block: `down(act(up(x)))`, or gated, `down(act(gate(x)) · up(x))`
/// with the gate's outputs first in one fused linear of `2 × intermediate` outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mlp {
    /// The activation (of the gate, when gated).
    pub activation: Activation,
    /// Whether the block is a gated linear unit (SwiGLU, GeGLU).
    pub gated: bool,
}

/// Layers that attend within a window, between layers that attend to the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Tokens a query sees on each side of itself.
    pub reach: usize,
    /// For each layer, whether it attends within the window (else to the whole text).
    pub local: Vec<bool>,
}

impl Window {
    /// The reach of layer `layer`, `None` when it attends globally.
    pub fn of_layer(&self, layer: usize) -> Option<usize> {
        self.local
            .get(layer)
            .copied()
            .unwrap_or(false)
            .then_some(self.reach)
    }
}

impl Rotary {
    /// Plain rotary embeddings over `dims` values of each head, for texts up to `max`.
    pub fn plain(base: f64, dims: usize, max: usize) -> Rotary {
        Rotary {
            base,
            local_base: None,
            dims,
            divisor: 1.0,
            max,
        }
    }

    /// Fixed NTK scaling by `factor` as Alibaba's GTE code applies it
    /// (`NTKScalingRotaryEmbedding`): the base times the factor, every frequency then divided
    /// by `factor^(2/dims)`.
    pub fn ntk(base: f64, factor: f64, dims: usize, max: usize) -> Rotary {
        Rotary {
            base: base * factor,
            divisor: factor.powf(2.0 / dims as f64),
            ..Rotary::plain(base, dims, max)
        }
    }
}

/// Query, key and value heads of a layer's fused projection: each token's row holds its
/// `heads` query heads, then its `kv_heads` key heads, then as many value heads, each `dim`
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub query: usize,
    /// Key heads, and as many value heads.
    pub kv: usize,
    /// Values per head.
    pub dim: usize,
}

impl Heads {
    /// Values of a token's query heads (the attention output's width).
    pub fn q_width(self) -> usize {
        self.query * self.dim
    }

    /// Values of a token's key heads (as many of its value heads).
    pub fn kv_width(self) -> usize {
        self.kv * self.dim
    }

    /// Values of a token's row of the fused projection.
    pub fn qkv_width(self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
}

impl Blueprint {
    /// The heads' layout.
    pub fn heads(&self) -> Heads {
        Heads {
            query: self.heads,
            kv: self.kv_heads,
            dim: self.head_dim,
        }
    }

    /// Longest text the model's positions cover.
    pub fn max_positions(&self) -> usize {
        match &self.positions {
            Positions::Learned { max, .. } => *max,
            Positions::Rotary(r) => r.max,
        }
    }

    /// Outputs of a layer's first feed-forward linear.
    pub fn up_outputs(&self) -> usize {
        if self.mlp.gated {
            2 * self.intermediate
        } else {
            self.intermediate
        }
    }

    /// Refuses sizes the encoder cannot run, naming the `config.json` values.
    pub fn check(&self) -> Result<(), String> {
        if self.heads == 0 || self.head_dim == 0 {
            return Err(format!(
                "config.json: {} attention heads of {} values: neither may be 0",
                self.heads, self.head_dim
            ));
        }
        // LayerNorm encoders (the BERT family) split the hidden size among their heads; the
        // decoders name their head width.
        if self.norm_kind == NormKind::Layer && self.heads * self.head_dim != self.hidden {
            return Err(format!(
                "config.json: the hidden size {} is not a multiple of the {} attention heads",
                self.hidden, self.heads
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "config.json: {} key-value heads cannot serve {} attention heads (a divisor of them is needed)",
                self.kv_heads, self.heads
            ));
        }
        if let Positions::Rotary(r) = &self.positions {
            let head = self.head_dim;
            if r.dims == 0 || r.dims > head || !r.dims.is_multiple_of(2) {
                return Err(format!(
                    "config.json: {} rotary dimensions do not fit heads of {head} values (an even number up to the head's width)",
                    r.dims
                ));
            }
        }
        if let Some(w) = &self.window
            && w.local.len() != self.layers
        {
            return Err(format!(
                "config.json: {} layer types for {} layers",
                w.local.len(),
                self.layers
            ));
        }
        if self.vocab == 0 || self.layers == 0 || self.intermediate == 0 {
            return Err(
                "config.json: the vocabulary, layers and feed-forward width must not be 0".into(),
            );
        }
        Ok(())
    }
}
