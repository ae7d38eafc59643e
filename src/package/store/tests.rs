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
