//! Tokenization off the async workers: a short request on the worker itself, a longer one on
//! tokio's blocking threads, cut into pieces tokenized at once.
//!
//! Why pieces: a client that sends its batches one after another waits, between two passes,
//! for its request to be tokenized, and the compute threads are idle then. Tokenizing 32
//! short texts cost about a millisecond of one core (Zen 3), next to a 12 ms pass at 16
//! threads; cut into pieces it takes a share of the cores instead, as the pass does.

use std::sync::{Arc, OnceLock};

use super::ServeError;

/// Inputs of at most this many bytes in all are tokenized on the async worker itself: a short
/// text takes a few microseconds (WordPiece was 0.13% of a one-text request's profile), less
/// than handing it to a blocking thread and back, two thread wake-ups.
const INLINE_BYTES: usize = 1024;

/// The least a piece of a longer request holds: a piece costs a blocking thread's wake-up and
/// hand-back (tens of microseconds), which 512 bytes of text (about eight short texts) repay.
const PIECE_BYTES: usize = 512;

/// Runs tokenization `work` over inputs of `bytes` bytes in one piece: inline when they are
/// short, else off the async workers. Its error is the request's fault, a panic the daemon's.
pub(super) async fn tokenize_off_runtime<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ServeError> {
    let outcome = if bytes <= INLINE_BYTES {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .map_err(|_| ServeError::TokenizerCrashed("the tokenizer panicked".into()))?
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ServeError::TokenizerCrashed(e.to_string()))?
    };
    outcome.map_err(ServeError::Tokenizer)
}

/// `work` applied to each of `items` (`size` of each in bytes), in order: in one piece as
/// [`tokenize_off_runtime`] when the request is short, else cut into [`pieces`] run at once on
/// the blocking threads. The error is that of the first item that fails, as in one piece.
pub(super) async fn tokenize_each<T, U, F>(
    items: Vec<T>,
    size: impl Fn(&T) -> usize,
    work: F,
) -> Result<Vec<U>, ServeError>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(&T) -> Result<U, String> + Send + Sync + 'static,
{
    tokenize_on(cores(), items, size, work).await
}

/// [`tokenize_each`] as on a machine of `cores` cores.
async fn tokenize_on<T, U, F>(
    cores: usize,
    items: Vec<T>,
    size: impl Fn(&T) -> usize,
    work: F,
) -> Result<Vec<U>, ServeError>
where
    T: Send + 'static,
    U: Send + 'static,
    F: Fn(&T) -> Result<U, String> + Send + Sync + 'static,
{
    let sizes: Vec<usize> = items.iter().map(size).collect();
    let bytes = sizes.iter().sum();
    let cuts = pieces(&sizes, cores);
    if cuts.len() <= 1 {
        return tokenize_off_runtime(bytes, move || items.iter().map(work).collect()).await;
    }
    let work = Arc::new(work);
    let mut items = items.into_iter();
    let mut running = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for end in cuts {
        let piece: Vec<T> = items.by_ref().take(end - start).collect();
        start = end;
        let work = work.clone();
        running.push(tokio::task::spawn_blocking(move || {
            piece
                .iter()
                .map(|t| work(t))
                .collect::<Result<Vec<U>, String>>()
        }));
    }
    let mut out = Vec::with_capacity(sizes.len());
    for piece in running {
        let done = piece
            .await
            .map_err(|e| ServeError::TokenizerCrashed(e.to_string()))?;
        out.extend(done.map_err(ServeError::Tokenizer)?);
    }
    Ok(out)
}

/// Where to cut items of `sizes` bytes into pieces tokenized at once on `cores` cores: the end
/// (exclusive) of each piece, in order, the last being `sizes.len()`. One piece for a request
/// of at most [`INLINE_BYTES`]; else as many as the bytes fill at [`PIECE_BYTES`] each, at
/// most one per core and per item, of about equal bytes.
fn pieces(sizes: &[usize], cores: usize) -> Vec<usize> {
    let bytes: usize = sizes.iter().sum();
    let n = if bytes <= INLINE_BYTES {
        1
    } else {
        (bytes / PIECE_BYTES).min(cores).min(sizes.len()).max(1)
    };
    let mut ends = Vec::with_capacity(n);
    let mut filled = 0;
    for (i, s) in sizes.iter().enumerate() {
        filled += s;
        // Cut once this piece's share of the bytes is reached, leaving an item for each
        // piece still to come.
        let share = bytes * (ends.len() + 1) / n;
        if ends.len() + 1 < n && filled >= share && sizes.len() - (i + 1) >= n - ends.len() - 1 {
            ends.push(i + 1);
        }
    }
    ends.push(sizes.len());
    ends
}

/// The cores this process may run on, once.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths (inline for short inputs, a blocking thread for long ones) give the same
    /// answers: the value, the request's fault, a panic as the daemon's.
    #[tokio::test]
    async fn tokenization_answers_alike_inline_and_off_the_runtime() {
        for bytes in [INLINE_BYTES, INLINE_BYTES + 1] {
            assert_eq!(tokenize_off_runtime(bytes, || Ok(7)).await.ok(), Some(7));
            let e = tokenize_off_runtime::<()>(bytes, || Err("no such token".into()))
                .await
                .expect_err("an error");
            assert!(
                matches!(&e, ServeError::Tokenizer(m) if m == "no such token"),
                "{e:?}"
            );
            let e = tokenize_off_runtime::<()>(bytes, || panic!("tokenizer bug"))
                .await
                .expect_err("a panic");
            assert!(matches!(e, ServeError::TokenizerCrashed(_)), "{e:?}");
        }
    }

    #[test]
    fn a_short_request_is_one_piece() {
        assert_eq!(pieces(&[], 16), vec![0]);
        assert_eq!(pieces(&[INLINE_BYTES], 16), vec![1]);
        assert_eq!(pieces(&[100; 10], 16), vec![10]);
        // Longer, but one core or one item.
        assert_eq!(pieces(&[100; 20], 1), vec![20]);
        assert_eq!(pieces(&[5000], 16), vec![1]);
    }

    #[test]
    fn a_long_request_is_cut_into_pieces_of_about_equal_bytes_one_per_core_at_most() {
        // 32 texts of 64 bytes: 2,048 bytes fill 4 pieces of 512.
        assert_eq!(pieces(&[64; 32], 16), vec![8, 16, 24, 32]);
        assert_eq!(pieces(&[64; 32], 2), vec![16, 32]);
        // Uneven sizes: every piece non-empty, in order, covering every item once.
        let sizes = [3000, 10, 10, 10, 10, 10, 10, 10];
        for cores in 1..=16 {
            let ends = pieces(&sizes, cores);
            assert_eq!(ends.last(), Some(&sizes.len()), "{cores} cores: {ends:?}");
            assert!(ends.len() <= cores, "{cores} cores: {ends:?}");
            let mut start = 0;
            for &end in &ends {
                assert!(end > start, "{cores} cores: an empty piece in {ends:?}");
                start = end;
            }
        }
        // 3,070 bytes fill 5 pieces; the long text is one alone.
        assert_eq!(pieces(&sizes, 16), vec![1, 2, 3, 4, 8]);
    }

    /// Cut into pieces (four, whatever cores this machine has), the items come back in
    /// order, and the error is the first failing item's (in the third piece, another failing
    /// in the fourth), as in one piece.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_answer_in_order_with_the_first_error() {
        let items: Vec<String> = (0..64).map(|i| format!("{i:0>40}")).collect();
        let sizes: Vec<usize> = items.iter().map(String::len).collect();
        assert_eq!(pieces(&sizes, 4), vec![16, 32, 48, 64]);
        let out = tokenize_on(4, items.clone(), String::len, |t: &String| {
            t.trim_start_matches('0').parse::<usize>().or(Ok(0))
        })
        .await
        .expect("parsed");
        assert_eq!(out, (0..64).collect::<Vec<_>>());
        let e = tokenize_on(4, items, String::len, |t: &String| {
            let n: usize = t.trim_start_matches('0').parse().unwrap_or(0);
            if n == 40 || n == 60 {
                Err(format!("item {n} fails"))
            } else {
                Ok(n)
            }
        })
        .await
        .expect_err("an item fails");
        assert!(
            matches!(&e, ServeError::Tokenizer(m) if m == "item 40 fails"),
            "{e:?}"
        );
    }
}
