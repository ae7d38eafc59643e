//! Pictures through a two-tower model: each decoded within the configured limits and made
//! into its model's tensor off the async workers (at most one picture a core at once), then
//! through the image tower on the model's engine thread; and a text query scored against
//! pictures by the model's own logit (`/rerank` of image documents).

use std::sync::Arc;

use super::rerank::{RerankRequest, Reranked};
use super::{ServeError, account, check_serving, served_by, tokenize_each};
use crate::config::Settings;
use crate::engine::{EngineError, LoadedModel, VectorShape};
use crate::images::{self, Limits};
use crate::package::ModelKind;
use crate::registry::{ModelError, Wanted};
use crate::state::AppState;

/// A picture of a request as the client sent it.
#[derive(Debug, Clone)]
pub struct Picture {
    /// Where it is in the request (`input[2].image`, `images[0]`), for error messages.
    pub place: String,
    /// Its data URI.
    pub uri: String,
}

/// The limits pictures are held to under `settings`.
fn limits(settings: &Settings) -> Limits {
    Limits {
        max_bytes: usize::try_from(settings.limits.max_image_bytes.0).unwrap_or(usize::MAX),
        max_pixels: settings.limits.max_image_pixels,
    }
}

/// Refuses pictures for the model `id` when it is known and embeds text only, before any load.
pub(super) fn check_takes_pictures(
    state: &AppState,
    id: &str,
    first: &Picture,
) -> Result<(), ServeError> {
    match state.registry.get(id) {
        Some(known) if !known.package.manifest.serves(ModelKind::ImageText) => {
            Err(ServeError::NotImageModel {
                place: first.place.clone(),
                id: id.to_string(),
                kind: known.package.manifest.kind.shape_kind().described(),
            })
        }
        _ => Ok(()),
    }
}

/// The vectors of `pictures` by the two-tower `model`, as `shape` asks, and the rows its
/// image tower ran for them (a picture's patches are its tokens).
pub(super) async fn embed_pictures(
    settings: &Settings,
    model: &Arc<LoadedModel>,
    pictures: Vec<Picture>,
    shape: VectorShape,
) -> Result<(Vec<Vec<f32>>, usize), ServeError> {
    let vision = model.vision.clone().ok_or_else(|| {
        ServeError::Engine(EngineError::Failed(format!(
            "model {} has no image tower",
            model.id()
        )))
    })?;
    let limits = limits(settings);
    // A picture's patches (and CLIP's class row) are its tokens.
    let tokens = vision.image_tokens * pictures.len();
    // Decoding and resizing are CPU work: on the blocking threads, like long texts'
    // tokenization, split the same way (one piece a core at most). A refused picture is that
    // picture's answer, not the splitting's error.
    let prepared: Vec<Result<Vec<f32>, ServeError>> = tokenize_each(
        pictures,
        |p| p.uri.len(),
        move |p| {
            Ok(images::decode_data_uri(&p.uri, &limits)
                .map(|i| vision.preprocess.apply(&i))
                .map_err(|error| ServeError::Image {
                    place: p.place.clone(),
                    error,
                }))
        },
    )
    .await?;
    let tensors = prepared.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((model.embed_images(tensors, shape).await?, tokens))
}

/// The image-text model a request with pictures names, else the one installed.
pub(super) fn image_model(state: &AppState, named: Option<String>) -> Result<String, ModelError> {
    match named {
        Some(id) => Ok(id),
        None => super::default_of_kind(
            &state.registry,
            None,
            ModelKind::ImageText,
            ModelError::NoImageText,
            ModelError::ImageTextRequired,
        ),
    }
}

/// Scores every picture of `pictures` against `req.query` with the image-text model it
/// names (else the one installed): the model's logit (CLIP's scaled cosine; SigLIP's with its
/// bias) and score (CLIP's logit; SigLIP's sigmoid of it).
pub async fn rerank(
    state: &Arc<AppState>,
    req: RerankRequest,
    pictures: Vec<Picture>,
) -> Result<Reranked, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = image_model(state, req.model.clone())?;
    if let Some(first) = pictures.first() {
        check_takes_pictures(state, &requested, first)?;
    }
    let wanted = Wanted {
        id: &requested,
        kind: ModelKind::ImageText,
        width: None,
    };
    let served = state.registry.serve(&settings.models, wanted).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let scorer = model.vision.as_ref().map(|v| v.scorer).ok_or_else(|| {
        ServeError::Engine(EngineError::Failed(format!("model {id} has no scorer")))
    })?;
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let query = tokenize_each(vec![req.query], String::len, move |q| {
        tokenizer.encode_cut(q, cut)
    })
    .await?;
    let (_, text_tokens) = super::lengths(&query, req.truncate, |_| ServeError::SideTooLong {
        what: "query".into(),
        side: "query",
        max: model.package.manifest.max_seq_length,
        id: id.clone(),
    })?;
    let shape = VectorShape {
        normalize: true,
        width: None,
    };
    let (text, pictures) = tokio::join!(
        model.embed(query, shape),
        embed_pictures(&settings, &model, pictures, shape)
    );
    let (text, (pictures, image_tokens)) = (text?, pictures?);
    let text = text.first().cloned().unwrap_or_default();
    let logits: Vec<f32> = pictures.iter().map(|p| scorer.logit(&text, p)).collect();
    if let Some(index) = logits.iter().position(|x| !x.is_finite()) {
        return Err(ServeError::NonFinite {
            id,
            field: req.field,
            index,
            value: logits[index],
        });
    }
    let tokens = text_tokens + image_tokens;
    account(&slot, logits.len() + 1, tokens);
    let scores = pictures.iter().map(|p| scorer.score(&text, p)).collect();
    Ok(Reranked {
        model: id,
        logits,
        scores,
        tokens,
        fallback: served.fallback,
        // No document is text to cut; a query is cut only when the request allows it (and
        // is then refused above otherwise), like a multi-vector model's.
        truncated: Vec::new(),
    })
}
