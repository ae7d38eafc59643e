//! The daemon's own engine in this process: the same model and precision, each request's
//! texts tokenized here and handed to the model's engine thread as the daemon hands them,
//! with no socket, HTTP, JSON or registry in between. In the twin run the benchmark sends the
//! same requests to both, in turns, so a busy neighbour on a shared machine slows both alike
//! and the daemon's figures over these are what its request path costs; `--engine-alone`
//! runs it with no daemon at all.

use std::time::{Duration, Instant};

use caxton::engine::{Cut, LoadedModel, VectorShape};

/// The engine of a model loaded in this process.
pub struct Engine<'a> {
    model: &'a LoadedModel,
    shape: VectorShape,
}

impl<'a> Engine<'a> {
    pub fn new(model: &'a LoadedModel) -> Engine<'a> {
        Engine {
            model,
            shape: VectorShape {
                normalize: model.package.manifest.normalize,
                width: None,
            },
        }
    }

    /// Embeds `texts` as the daemon serves a request (tokenized, cut at the model's length as
    /// the benchmark's requests ask, then the engine's pass, pooling and finish); returns how
    /// long it took and the texts' tokens.
    pub async fn embed(&self, texts: &[String]) -> anyhow::Result<(Duration, u64)> {
        Ok(self.vectors(texts).await?.0)
    }

    /// [`Engine::embed`], with the vectors.
    pub async fn vectors(
        &self,
        texts: &[String],
    ) -> anyhow::Result<((Duration, u64), Vec<Vec<f32>>)> {
        let t = Instant::now();
        let encoded = texts
            .iter()
            .map(|t| self.model.tokenizer.encode_cut(t, Cut::End))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let tokens = encoded.iter().map(|e| e.ids.len() as u64).sum();
        let vectors = self.model.embed(encoded, self.shape).await?;
        Ok(((t.elapsed(), tokens), vectors))
    }
}
