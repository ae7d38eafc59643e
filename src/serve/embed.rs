//! Embedding texts: the model (or its substitute), the prompt, tokenization, the length rule,
//! the engine's pass at the asked width.

use std::sync::Arc;

use super::images::{Picture, check_takes_pictures, embed_pictures, image_model};
use super::{ServeError, account, check_serving, lengths, served_by, tokenize_each};
use crate::engine::{Cut, Encoded, VectorShape};
use crate::package::{InputType, ModelKind};
use crate::registry::Wanted;
use crate::registry::fallback::Reason;
use crate::state::AppState;

/// One embedding request, whatever API it came through.
pub struct EmbedRequest {
    /// Model id, or the default.
    pub model: Option<String>,
    /// Non-empty texts.
    pub texts: Vec<String>,
    /// Cut texts at the model's limit (true) or refuse them (false).
    pub truncate: bool,
    /// Which end of an over-long text goes.
    pub cut: Cut,
    /// Override the model's normalisation.
    pub normalize: Option<bool>,
    /// One of the model's prompts to put before every text (else its default prompt).
    pub prompt_name: Option<String>,
    /// What the texts are, which picks the model's prompt for them.
    pub input_type: Option<InputType>,
    /// The width to cut vectors to (OpenAI's `dimensions`), checked against the model
    /// before anything loads.
    pub dimensions: Option<i64>,
    /// Pictures among the inputs, each with its index in the request's order (the texts
    /// take the other places, in theirs); only an image-text model takes them.
    pub pictures: Vec<(usize, Picture)>,
}

/// Vectors and accounting for a request.
pub struct Embedded {
    /// The model that answered.
    pub model: String,
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<Reason>,
    /// The inputs cut at the model's length.
    pub truncated: Vec<usize>,
    /// How long the request waited for its model (a load, when it was not in memory).
    pub waited: std::time::Duration,
    /// Whether the vectors are of unit length.
    pub normalized: bool,
}

/// Runs `req` through the named (or default) model.
pub async fn embed(state: &Arc<AppState>, req: EmbedRequest) -> Result<Embedded, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = match (req.model, req.pictures.is_empty()) {
        (Some(id), _) => id,
        (None, true) => settings.models.default.clone(),
        // Pictures go to the image-text model installed, as picture documents do.
        (None, false) => image_model(state, None)?,
    };
    if let Some(known) = state.registry.get(&requested) {
        // Before a load: a prompt the model does not have costs nothing.
        known
            .package
            .manifest
            .prompt_for(req.prompt_name.as_deref(), req.input_type)?;
    }
    if let Some((_, first)) = req.pictures.first() {
        check_takes_pictures(state, &requested, first)?;
    }
    let wanted = Wanted {
        id: &requested,
        kind: match req.pictures.is_empty() {
            true => ModelKind::Embedding,
            false => ModelKind::ImageText,
        },
        width: req.dimensions,
    };
    let asked = std::time::Instant::now();
    let served = state.registry.serve(&settings.models, wanted).await?;
    let waited = asked.elapsed();
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let manifest = &model.package.manifest;
    let prompt = manifest
        .prompt_for(req.prompt_name.as_deref(), req.input_type)?
        .map(str::to_owned);
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let texts = match prompt {
        // As sentence-transformers does: the prompt is part of the text, tokens and all.
        Some(p) => req.texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        None => req.texts,
    };
    let encoded: Vec<Encoded> =
        tokenize_each(texts, String::len, move |t| tokenizer.encode_cut(t, cut)).await?;
    let (truncated, tokens) = lengths(&encoded, req.truncate, |index| ServeError::TooLong {
        index,
        max: manifest.max_seq_length,
        id: id.clone(),
    })?;
    tracing::debug!(caxton_model = %id, texts = encoded.len(), tokens, "embedding request queued");
    let shape = VectorShape {
        normalize: req.normalize.unwrap_or(manifest.normalize),
        width: served.width,
    };
    let (places, pictures): (Vec<usize>, Vec<Picture>) = req.pictures.into_iter().unzip();
    let (vectors, pictures) = match pictures.is_empty() {
        true => (model.embed(encoded, shape).await?, None),
        false => {
            let texts = async {
                match encoded.is_empty() {
                    true => Ok(Vec::new()),
                    false => model.embed(encoded, shape).await,
                }
            };
            let (texts, pictures) =
                tokio::join!(texts, embed_pictures(&settings, &model, pictures, shape));
            (texts?, Some(pictures?))
        }
    };
    let (vectors, tokens) = match pictures {
        None => (vectors, tokens),
        Some((pictures, image_tokens)) => (
            interleave(vectors, pictures, &places),
            tokens + image_tokens,
        ),
    };
    account(&slot, vectors.len(), tokens);
    Ok(Embedded {
        model: id,
        vectors,
        tokens,
        fallback: served.fallback,
        truncated,
        waited,
        normalized: shape.normalize,
    })
}

/// The texts' and the pictures' vectors in the request's order: picture `k` at `places[k]`
/// (ascending), the texts in the other places, in theirs.
fn interleave(texts: Vec<Vec<f32>>, pictures: Vec<Vec<f32>>, places: &[usize]) -> Vec<Vec<f32>> {
    let total = texts.len() + pictures.len();
    let (mut texts, mut pictures) = (texts.into_iter(), pictures.into_iter());
    let mut next_picture = places.iter().peekable();
    (0..total)
        .filter_map(|i| match next_picture.peek() {
            Some(&&p) if p == i => {
                next_picture.next();
                pictures.next()
            }
            _ => texts.next(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::interleave;

    #[test]
    fn pictures_take_their_places_and_texts_the_rest_in_order() {
        let v = |x: f32| vec![x];
        assert_eq!(
            interleave(vec![v(0.0), v(2.0)], vec![v(1.0), v(3.0)], &[1, 3]),
            vec![v(0.0), v(1.0), v(2.0), v(3.0)]
        );
        assert_eq!(interleave(Vec::new(), vec![v(7.0)], &[0]), vec![v(7.0)]);
        assert_eq!(
            interleave(vec![v(1.0)], vec![v(0.0)], &[0]),
            vec![v(0.0), v(1.0)]
        );
    }
}
