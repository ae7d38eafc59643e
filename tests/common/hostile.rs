//! Builders for hostile packages: tar written header by header so each breaks exactly one rule.
#![allow(dead_code)]

use std::io::Write;

use sha2::{Digest, Sha256};

pub const CONFIG: &[u8] = b"{\"model_type\": \"bert\", \"hidden_size\": 4}";
pub const TOKENIZER: &[u8] = b"{}";
pub const WEIGHTS: &[u8] = b"0123456789";

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn manifest_for(files: &[(&str, &[u8])]) -> String {
    let mut m = String::from(
        "format: 1\nid: tiny\nversion: \"1\"\narchitecture: bert\ndimensions: 4\nmax_seq_length: 16\npooling: mean\nnormalize: true\nfiles:\n",
    );
    for (name, bytes) in files {
        m.push_str(&format!(
            "  - {{path: {name}, size: {}, sha256: \"{}\"}}\n",
            bytes.len(),
            sha(bytes)
        ));
    }
    m
}

pub fn good_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("config.json", CONFIG),
        ("tokenizer.json", TOKENIZER),
        ("model.safetensors", WEIGHTS),
    ]
}

/// A tar entry written with a raw header, so names and types the tar crate would refuse can be
/// produced.
pub struct Entry {
    pub name: String,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    /// Size written in the header when it should lie about the data.
    pub header_size: Option<u64>,
    pub link: Option<String>,
}

pub fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        header_size: None,
        link: None,
    }
}

pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_old();
        {
            let raw = h.as_old_mut();
            raw.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            if let Some(link) = &e.link {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_mode(0o644);
        h.set_size(e.header_size.unwrap_or(e.data.len() as u64));
        h.set_entry_type(e.kind);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

pub fn package(entries: Vec<Entry>) -> Vec<u8> {
    zstd(&tar_bytes(&entries))
}

pub fn standard(manifest: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = vec![file("manifest.yaml", manifest.as_bytes())];
    entries.extend(files.iter().map(|(n, d)| file(n, d)));
    package(entries)
}

/// 1 GiB of zeros after a valid archive: a small file that inflates without bound.
pub fn bomb() -> Vec<u8> {
    let files = good_files();
    let m = manifest_for(&files);
    let mut enc = zstd::Encoder::new(Vec::new(), 1).expect("encoder");
    let mut entries = vec![file("manifest.yaml", m.as_bytes())];
    entries.extend(files.iter().map(|(n, d)| file(n, d)));
    enc.write_all(&tar_bytes(&entries)).expect("write");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).expect("write");
    }
    enc.finish().expect("finish")
}

/// A manifest declaring a 30 GiB weights file, then a GNU long-name header whose 1 GiB "name"
/// the tar crate would read into memory: the per-entry budget must stop it.
pub fn longname_bomb() -> Vec<u8> {
    let m = manifest_for(&good_files()).replacen("size: 10,", "size: 32212254720,", 1);
    let mut enc = zstd::Encoder::new(Vec::new(), 1).expect("encoder");
    let head = tar_bytes(&[file("manifest.yaml", m.as_bytes())]);
    // Without the two end-of-archive blocks, so the next header follows the manifest.
    enc.write_all(&head[..head.len() - 1024]).expect("write");
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
    h.set_mode(0o644);
    h.set_size(1 << 30);
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_cksum();
    enc.write_all(h.as_bytes()).expect("write");
    let zeros = vec![b'a'; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&zeros).expect("write");
    }
    enc.finish().expect("finish")
}

/// A package that is good but for one extra entry.
pub fn with_extra(e: Entry) -> Vec<u8> {
    let files = good_files();
    let m = manifest_for(&files);
    let mut entries = vec![file("manifest.yaml", m.as_bytes())];
    entries.extend(files.iter().map(|(n, d)| file(n, d)));
    entries.push(e);
    package(entries)
}

/// An entry of `kind` (link, device, ...) named `name`.
pub fn special(name: &str, kind: tar::EntryType) -> Entry {
    Entry {
        name: name.into(),
        kind,
        data: Vec::new(),
        header_size: None,
        link: Some("/etc/passwd".into()),
    }
}

/// The good files, but with other weights than the manifest lists.
pub fn with_weights(weights: &'static [u8]) -> [(&'static str, &'static [u8]); 3] {
    [
        ("config.json", CONFIG),
        ("tokenizer.json", TOKENIZER),
        ("model.safetensors", weights),
    ]
}

/// The hostile corpus: (file name, package bytes, the rejection kind it must get).
pub fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let files = good_files();
    let m = manifest_for(&files);
    let tampered = with_weights(b"0123456780");
    let longer = with_weights(b"01234567890");
    let mut extra = files.clone();
    extra.push(("notes.txt", b"hi"));
    let mut dup = files.clone();
    dup.push(("config.json", CONFIG));
    let mut not_first: Vec<Entry> = files.iter().map(|(n, d)| file(n, d)).collect();
    not_first.push(file("manifest.yaml", m.as_bytes()));
    let good = standard(&m, &files);
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vec![
        ("sha-mismatch", standard(&m, &tampered), "sha256_mismatch"),
        ("size-mismatch", standard(&m, &longer), "size_mismatch"),
        ("missing-file", standard(&m, &files[..2]), "missing_entry"),
        ("extra-file", standard(&m, &extra), "extra_entry"),
        (
            "traversal",
            with_extra(file("../escape", b"x")),
            "unsafe_entry",
        ),
        (
            "absolute",
            with_extra(file("/tmp/caxton-absolute-escape", b"x")),
            "unsafe_entry",
        ),
        (
            "symlink",
            with_extra(special("link", tar::EntryType::Symlink)),
            "unsafe_entry",
        ),
        (
            "hardlink",
            with_extra(special("hard", tar::EntryType::Link)),
            "unsafe_entry",
        ),
        (
            "device",
            with_extra(special("dev", tar::EntryType::Char)),
            "unsafe_entry",
        ),
        ("duplicate", standard(&m, &dup), "duplicate_entry"),
        (
            "truncated-zstd",
            good[..good.len() - 20].to_vec(),
            "truncated",
        ),
        ("not-zstd", b"PK\x03\x04 a zip file".to_vec(), "not_zstd"),
        ("random-bytes", random, "not_zstd"),
        ("zstd-bomb", bomb(), "decompression_bound"),
        ("longname-bomb", longname_bomb(), "decompression_bound"),
        ("manifest-missing", package(Vec::new()), "manifest_missing"),
        (
            "manifest-not-first",
            package(not_first),
            "manifest_not_first",
        ),
        (
            "unknown-key",
            standard(
                &m.replace("normalize: true", "normalize: true\ncolour: blue"),
                &files,
            ),
            "manifest_invalid",
        ),
        (
            "unsupported-arch",
            standard(
                &m.replace("architecture: bert", "architecture: gpt2"),
                &files,
            ),
            "manifest_invalid",
        ),
        (
            "dimensions-disagree",
            standard(&m.replace("dimensions: 4", "dimensions: 8"), &files),
            "manifest_invalid",
        ),
        (
            "bad-id",
            standard(&m.replace("id: tiny", "id: \"../x\""), &files),
            "manifest_invalid",
        ),
    ]
}
