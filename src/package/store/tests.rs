//! Reading a stored package's files through the hash check.

use super::*;

/// A stored package whose `model.safetensors` is `bytes` on disk while the manifest declares
/// `declared` (size and sha256).
fn stored(dir: &Path, bytes: &[u8], declared: &[u8]) -> StoredPackage {
    fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let hash = hex::encode(Sha256::digest(declared));
    let yaml = format!(
        "format: 1\nid: m\nversion: \"1\"\narchitecture: bert\ndimensions: 4\n\
         max_seq_length: 8\npooling: mean\nnormalize: true\nfiles:\n\
         - {{path: model.safetensors, size: {}, sha256: \"{hash}\"}}\n\
         - {{path: tokenizer.json, size: 1, sha256: \"{hash}\"}}\n\
         - {{path: config.json, size: 1, sha256: \"{hash}\"}}\n",
        declared.len()
    );
    StoredPackage {
        dir: dir.to_path_buf(),
        manifest: Manifest::parse(yaml.as_bytes()).unwrap(),
        package_sha256: "0".repeat(64),
    }
}

#[test]
fn a_stream_is_handed_over_only_when_the_whole_file_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let good = b"0123456789abcdef".repeat(1000);
    let p = stored(tmp.path(), &good, &good);
    // The consumer reads only the first bytes: the rest is still hashed.
    let head = p
        .read_verified_with("model.safetensors", |r, size| {
            assert_eq!(size, good.len() as u64);
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            Ok(b)
        })
        .unwrap();
    assert_eq!(&head, b"0123");
    assert_eq!(p.read_verified("model.safetensors").unwrap(), good);
    // A consumer's own refusal of verified bytes is the model's fault.
    let e = p
        .read_verified_with("model.safetensors", |_, _| Err::<(), _>("no header".into()))
        .unwrap_err();
    assert_eq!(e.to_string(), "unusable model: no header");
}

#[test]
fn damage_is_reported_as_damage_even_when_the_consumer_failed_first() {
    let tmp = tempfile::tempdir().unwrap();
    let good = b"0123456789abcdef".repeat(1000);
    let mut bad = good.clone();
    bad[5] ^= 1;
    let p = stored(tmp.path(), &bad, &good);
    let e = p
        .read_verified_with("model.safetensors", |_, _| {
            Err::<(), _>("garbage header".into())
        })
        .unwrap_err();
    assert!(
        matches!(&e, PackageError::HashMismatch { entry, .. } if entry == "model.safetensors (store copy)"),
        "{e}"
    );
    let short = &good[..good.len() - 1];
    let p = stored(tmp.path(), short, &good);
    let e = p
        .read_verified_with("model.safetensors", |r, size| {
            let mut all = vec![0u8; size as usize];
            r.read_exact(&mut all).map_err(|e| e.to_string())
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            PackageError::SizeMismatch {
                declared: 16000,
                actual: 15999,
                ..
            }
        ),
        "{e}"
    );
}

/// A store under `state` with one entry, `sha`, whose model.safetensors is `bytes`.
fn entry(state: &Path, sha: &str, bytes: &[u8]) -> (Store, StoredPackage) {
    let store = Store::open(state).unwrap();
    let dir = store.root.join(sha);
    fs::create_dir_all(&dir).unwrap();
    let p = stored(&dir, bytes, bytes);
    fs::write(dir.join(MANIFEST_NAME), "format: 1\n").unwrap();
    (store, p)
}

/// Issue 50: a rescan pruned a superseded version while a load read it ("cannot open
/// …/config.json"). A leased entry survives the prune, reads whole, and goes with its last
/// lease; with none, the prune removes it at once and no lease can be taken any more.
#[test]
fn a_leased_entry_outlives_a_prune_and_goes_with_its_last_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = b"weights".repeat(100);
    let (store, p) = entry(tmp.path(), &"a".repeat(64), &bytes);
    let first = p.lease().expect("a lease on a stored entry");
    let second = p.lease().expect("a second lease");
    store.retain(&[]);
    assert!(p.is_stored(), "pruned under its leases");
    assert_eq!(p.read_verified("model.safetensors").unwrap(), bytes);
    drop(first);
    assert!(p.is_stored(), "pruned under its second lease");
    drop(second);
    assert!(!p.dir.exists(), "the last lease ended but the entry stayed");
    assert_eq!(store.leased(), 0);
    assert!(p.lease().is_none(), "a lease on a pruned entry");

    // Unleased, a prune removes it at once.
    let (store, p) = entry(tmp.path(), &"b".repeat(64), &bytes);
    store.retain(&[]);
    assert!(!p.dir.exists());
    assert!(p.lease().is_none());
}

/// An entry the store wanted gone while leased, then keeps again (its package came back),
/// stays when the lease ends.
#[test]
fn an_entry_kept_again_stays_when_its_lease_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let sha = "c".repeat(64);
    let (store, p) = entry(tmp.path(), &sha, b"w");
    let lease = p.lease().expect("lease");
    store.retain(&[]);
    store.retain(std::slice::from_ref(&sha));
    drop(lease);
    assert!(p.is_stored(), "kept again, but removed with its lease");
}

/// Loads and prunes racing: one thread leases the entry and reads it whole, over and over;
/// the other prunes it and puts it back. A read under a lease never fails, and both sides
/// really ran (leases taken and refused, entries removed).
#[test]
fn a_prune_racing_loads_never_takes_the_entry_from_under_one() {
    let tmp = tempfile::tempdir().unwrap();
    let sha = "d".repeat(64);
    let bytes = b"0123456789abcdef".repeat(4096);
    let (store, p) = entry(tmp.path(), &sha, &bytes);
    let staging = tmp.path().join("staging");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (leased, refused, removed) = std::thread::scope(|s| {
        let loads = s.spawn(|| {
            let (mut leased, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) || leased == 0 {
                match p.lease() {
                    Some(_lease) => {
                        let read = p.read_verified("model.safetensors");
                        assert_eq!(read.as_deref().ok(), Some(&bytes[..]), "{read:?}");
                        leased += 1;
                    }
                    None => refused += 1,
                }
            }
            (leased, refused)
        });
        let mut removed = 0;
        for _ in 0..300 {
            store.retain(&[]);
            if !p.dir.exists() {
                removed += 1;
                // Back, as an install puts an entry: whole, by a rename.
                fs::create_dir_all(&staging).unwrap();
                fs::write(staging.join("model.safetensors"), &bytes).unwrap();
                fs::write(staging.join(MANIFEST_NAME), "format: 1\n").unwrap();
                fs::rename(&staging, &p.dir).unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (leased, refused) = loads.join().unwrap();
        (leased, refused, removed)
    });
    println!("{leased} reads under a lease, {refused} leases refused, {removed} removals");
    assert!(leased > 0 && removed > 0, "the race did not happen");
}
