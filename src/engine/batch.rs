//! Dynamic batching: which queued texts run together in one forward pass.

/// Limits on one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most texts in one pass.
    pub max_texts: usize,
    /// Most padded tokens (texts × longest text) in one pass, which bounds activation memory.
    pub max_tokens: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_texts: 32,
            max_tokens: 8192,
        }
    }
}

/// Splits texts into forward passes. `lengths[i]` is text i's token count. Texts are sorted by
/// length first so each pass pads to a length close to its texts' own; each pass respects both
/// limits (a single text longer than `max_tokens` still gets a pass of its own). Returns
/// indices into `lengths`.
pub fn plan(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so this text is the longest of the batch it joins.
        let padded = (current.len() + 1) * lengths[i];
        if !current.is_empty() && (current.len() >= limits.max_texts || padded > limits.max_tokens)
        {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_texts: usize, max_tokens: usize) -> BatchLimits {
        BatchLimits {
            max_texts,
            max_tokens,
        }
    }

    #[test]
    fn sorts_by_length_and_covers_every_text_once() {
        let lengths = [5, 1, 3, 2, 4];
        let batches = plan(&lengths, limits(2, 100));
        assert_eq!(batches, vec![vec![1, 3], vec![2, 4], vec![0]]);
    }

    #[test]
    fn respects_the_token_budget() {
        let lengths = [10, 10, 10, 40];
        // 3 × 10 = 30 fits in 30; the 40-token text alone exceeds it but still runs.
        assert_eq!(plan(&lengths, limits(8, 30)), vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(plan(&[], BatchLimits::default()).is_empty());
    }
}
