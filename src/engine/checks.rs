//! What a loaded model must show before and while it serves: its load's self-test (a text,
//! and for a two-tower model a picture, through the engine thread: finite vectors of the
//! manifest's width, of unit length when normalised), and the watchdog's verdict on its
//! engine thread.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Cut, Encoded, EngineError, LoadedModel, VectorShape, outputs, worker};
use crate::package::{ModelKind, PackageError};

impl LoadedModel {
    /// The model once its self-test passed, with its load time from `started`.
    pub(super) fn checked(self, started: Instant) -> Result<LoadedModel, PackageError> {
        self.self_test().map_err(PackageError::SelfTest)?;
        Ok(LoadedModel {
            load_time: started.elapsed(),
            ..self
        })
    }

    /// Embeds one short text through the engine thread and checks the vector is one the
    /// model may serve: weights that load but compute garbage are found here, not by a
    /// client. Blocking.
    fn self_test(&self) -> Result<(), String> {
        let m = &self.package.manifest;
        let (text, width, normalize) = match m.kind {
            ModelKind::Embedding | ModelKind::Sparse | ModelKind::MultiVector => (
                self.tokenizer.encode(SELF_TEST_TEXT),
                m.dimensions,
                m.normalize,
            ),
            ModelKind::Reranker => (
                self.tokenizer
                    .encode_pair(SELF_TEST_TEXT, SELF_TEST_TEXT, None, Cut::End),
                m.labels.unwrap_or(1),
                false,
            ),
            ModelKind::ImageText => {
                let vision = self.vision.as_ref().ok_or("no image preprocessing")?;
                let picture = vision.preprocess.apply(&self_test_picture());
                let vectors = self.run_job(Vec::new(), vec![picture], m.normalize)?;
                check_self_test(&vectors, m.dimensions, m.normalize)
                    .map_err(|e| format!("the image tower: {e}"))?;
                (
                    self.tokenizer.encode(SELF_TEST_TEXT),
                    m.dimensions,
                    m.normalize,
                )
            }
        };
        let text =
            text.map_err(|e| format!("the tokenizer cannot encode {SELF_TEST_TEXT:?}: {e}"))?;
        let vectors = self
            .run_job(vec![text], Vec::new(), normalize)
            .map_err(|e| format!("running {SELF_TEST_TEXT:?} failed: {e}"))?;
        if m.kind == ModelKind::MultiVector {
            // One vector per token, each checked as a text's would be.
            let [v] = &vectors[..] else {
                return Err(format!("{} answers for one text", vectors.len()));
            };
            return v
                .chunks(width.max(1))
                .try_for_each(|row| check_self_test(&[row.to_vec()], width, normalize));
        }
        check_self_test(&vectors, width, normalize)
    }

    /// One job of `texts` or `pictures` through the engine thread, waited for. Blocking.
    fn run_job(
        &self,
        texts: Vec<Encoded>,
        images: Vec<Vec<f32>>,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.worker
            .submit(worker::Job {
                texts,
                images,
                shape: VectorShape {
                    normalize,
                    width: None,
                },
                output: outputs::Output::Main,
                reply,
            })
            .map_err(|e| format!("the engine thread took no job: {e}"))?;
        rx.blocking_recv()
            .map_err(|_| "the engine thread stopped".to_string())?
            .map_err(|e| e.to_string())
    }
}

/// The text embedded at every load.
const SELF_TEST_TEXT: &str = "Caxton checks this model before it serves.";

/// The picture a two-tower model's image tower sees at every load: gradients and a
/// checkerboard, so a tower that computes garbage on real structure shows it.
fn self_test_picture() -> image::RgbImage {
    image::RgbImage::from_fn(96, 64, |x, y| {
        let check = if (x / 8 + y / 8) % 2 == 0 { 200 } else { 40 };
        image::Rgb([(x * 255 / 95) as u8, (y * 255 / 63) as u8, check])
    })
}

/// Whether `vectors`, the self-test's answer, is one finite vector of `dimensions` values (a
/// reranker: its labels' logits), of unit length when `normalize`.
fn check_self_test(vectors: &[Vec<f32>], dimensions: usize, normalize: bool) -> Result<(), String> {
    let [v] = vectors else {
        return Err(format!("{} vectors for one text", vectors.len()));
    };
    if v.len() != dimensions {
        return Err(format!(
            "the vector has {} values, the manifest's dimensions say {dimensions}",
            v.len()
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "value {i} of the vector is {} (the weights compute non-finite numbers)",
            v[i]
        ));
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if normalize && (norm - 1.0).abs() > 1e-3 {
        return Err(format!(
            "the vector's length is {norm}, not 1 as the manifest's normalize: true needs"
        ));
    }
    if norm == 0.0 {
        return Err("the vector is all zeros".into());
    }
    Ok(())
}

/// The watchdog's verdict on one engine: `answered` is the empty job's outcome (`None`: no
/// answer within `timeout`).
pub(super) fn judge_liveness(
    id: &str,
    answered: Option<Result<(), EngineError>>,
    activity: worker::Activity,
    timeout: Duration,
) -> Result<(), String> {
    use worker::Activity;
    match (answered, activity) {
        // Unloaded while the ping waited: gone, not wedged.
        (Some(Ok(())), _) | (Some(Err(EngineError::Stopped)), _) => Ok(()),
        (Some(Err(e)), _) if !matches!(e, EngineError::Busy) => {
            Err(format!("the engine of {id} failed a round trip: {e}"))
        }
        (_, Activity::Looping(since)) if since < timeout => Ok(()),
        (_, Activity::InPass(running)) if running < PASS_LIMIT => Ok(()),
        (_, Activity::InPass(running)) => Err(format!(
            "the engine of {id} has been in one forward pass for {running:?}"
        )),
        (_, Activity::Looping(since)) => Err(format!(
            "the engine of {id} did not answer within {timeout:?} and has shown no sign of life for {since:?}"
        )),
    }
}

/// A forward pass running longer than this is taken for a wedged engine by the watchdog.
pub const PASS_LIMIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::worker::Activity;
    use super::*;

    const T: Duration = Duration::from_secs(7);

    #[test]
    fn a_long_forward_pass_is_alive_until_the_pass_limit() {
        let s = Duration::from_secs;
        assert_eq!(
            judge_liveness("m", Some(Ok(())), Activity::Looping(s(999)), T),
            Ok(())
        );
        // Queued behind a 60 s pass on a slow CPU: alive.
        assert_eq!(
            judge_liveness("m", None, Activity::InPass(s(60)), T),
            Ok(())
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Busy)),
                Activity::Looping(s(2)),
                T
            ),
            Ok(())
        );
        assert_eq!(
            judge_liveness("m", None, Activity::InPass(s(121)), T),
            Err("the engine of m has been in one forward pass for 121s".into())
        );
        assert_eq!(
            judge_liveness("m", None, Activity::Looping(s(30)), T),
            Err(
                "the engine of m did not answer within 7s and has shown no sign of life for 30s"
                    .into()
            )
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Stopped)),
                Activity::Looping(s(99)),
                T
            ),
            Ok(())
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Failed("boom".into()))),
                Activity::Looping(s(0)),
                T
            ),
            Err("the engine of m failed a round trip: boom".into())
        );
    }

    #[test]
    fn the_self_test_refuses_every_kind_of_garbage_vector() {
        let unit = vec![0.6, 0.8, 0.0];
        assert_eq!(
            check_self_test(std::slice::from_ref(&unit), 3, true),
            Ok(())
        );
        assert_eq!(
            check_self_test(&[vec![3.0, 4.0, 0.0]], 3, false),
            Ok(()),
            "unnormalized models may have any length"
        );
        assert_eq!(
            check_self_test(&[], 3, true),
            Err("0 vectors for one text".into())
        );
        assert_eq!(
            check_self_test(std::slice::from_ref(&unit), 4, true),
            Err("the vector has 3 values, the manifest's dimensions say 4".into())
        );
        assert_eq!(
            check_self_test(&[vec![0.6, f32::NAN, 0.0]], 3, false),
            Err("value 1 of the vector is NaN (the weights compute non-finite numbers)".into())
        );
        assert_eq!(
            check_self_test(&[vec![3.0, 4.0, 0.0]], 3, true),
            Err("the vector's length is 5, not 1 as the manifest's normalize: true needs".into())
        );
        assert_eq!(
            check_self_test(&[vec![0.0; 3]], 3, false),
            Err("the vector is all zeros".into())
        );
    }
}
