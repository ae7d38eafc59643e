//! What the verified store keeps (`store.max_size`), as a pure function: the version of each
//! model that serves, always; and at most one previous version per model (the newest stored
//! version below it, ready should the serving one's package be removed), newest packages
//! first, while everything fits within the bound. Older versions beyond it are verified but
//! never unpacked; entries no package refers to any more go at the next scan. (A "fallback"
//! elsewhere is another model answering for one that cannot: `registry::fallback`.)

/// A stored previous version of a model the plan may keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    /// Store digest.
    pub sha: String,
    /// Bytes it takes unpacked.
    pub bytes: u64,
    /// When its package file arrived (its mtime, seconds): the oldest go first.
    pub arrived: i64,
}

/// What a scan keeps in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Digests to keep: the serving versions, then the previous versions that fit.
    pub keep: Vec<String>,
    /// Bytes those take.
    pub bytes: u64,
    /// Previous versions left out to stay within the bound (the oldest packages).
    pub dropped: Vec<String>,
}

/// Keeps every serving version (`serving`: digest and bytes) and, newest package first, the
/// previous versions that fit within `bound` with them.
pub fn retain(serving: &[(String, u64)], previous: &[Previous], bound: u64) -> Retention {
    let mut keep: Vec<String> = serving.iter().map(|(sha, _)| sha.clone()).collect();
    let mut bytes: u64 = serving.iter().map(|(_, b)| b).sum();
    let mut by_age: Vec<&Previous> = previous.iter().collect();
    by_age.sort_by(|a, b| b.arrived.cmp(&a.arrived).then(a.sha.cmp(&b.sha)));
    let mut dropped = Vec::new();
    for f in by_age {
        if keep.contains(&f.sha) {
            continue;
        }
        if bytes.saturating_add(f.bytes) <= bound {
            bytes += f.bytes;
            keep.push(f.sha.clone());
        } else {
            dropped.push(f.sha.clone());
        }
    }
    Retention {
        keep,
        bytes,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previous(sha: &str, bytes: u64, arrived: i64) -> Previous {
        Previous {
            sha: sha.into(),
            bytes,
            arrived,
        }
    }

    #[test]
    fn previous_versions_fit_newest_first_and_the_serving_versions_always_stay() {
        let serving = [("a3".to_string(), 40), ("b1".to_string(), 30)];
        let previous = [
            previous("a2", 40, 100),
            previous("c1", 10, 300),
            previous("d1", 25, 200),
        ];
        // Room for everything.
        let all = retain(&serving, &previous, 1_000);
        assert_eq!(all.keep, ["a3", "b1", "c1", "d1", "a2"]);
        assert_eq!((all.bytes, all.dropped.len()), (145, 0));
        // 110 bytes: c1 (newest) and d1 fit; a2, the oldest, goes.
        let tight = retain(&serving, &previous, 110);
        assert_eq!(tight.keep, ["a3", "b1", "c1", "d1"]);
        assert_eq!((tight.bytes, tight.dropped), (105, vec!["a2".to_string()]));
        // A smaller, older previous version still fits after a larger newer one is left out.
        let gap = retain(&serving, &previous, 85);
        assert_eq!(gap.keep, ["a3", "b1", "c1"]);
        assert_eq!(gap.dropped, ["d1", "a2"]);
        // Over the bound with the serving versions alone: they stay, every previous version goes.
        let over = retain(&serving, &previous, 50);
        assert_eq!(over.keep, ["a3", "b1"]);
        assert_eq!(over.bytes, 70);
        assert_eq!(over.dropped, ["c1", "d1", "a2"]);
    }

    #[test]
    fn a_digest_both_serving_and_a_previous_version_counts_once() {
        // Two ids packaged from the same bytes share one store entry.
        let serving = [("x".to_string(), 40)];
        let r = retain(&serving, &[previous("x", 40, 1)], 40);
        assert_eq!(
            (r.keep, r.bytes, r.dropped),
            (vec!["x".to_string()], 40, vec![])
        );
    }
}
