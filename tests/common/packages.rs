//! Packages made from the bundled one for tests: other ids and versions, edited manifests,
//! poisoned weights.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bundled_dir;

/// Copies the bundled package under another model id (same weights), for tests that need a
/// second model.
pub fn bundled_copy_with_id(dst: &Path, id: &str) {
    bundled_copy(dst, id, "1");
}

/// Copies the bundled package with another id and version.
pub fn bundled_copy(dst: &Path, id: &str, version: &str) {
    let (id, version) = (id.to_string(), version.to_string());
    bundled_copy_edit(dst, move |m| {
        m.replace("id: all-MiniLM-L6-v2", &format!("id: {id}"))
            .replace("version: '1'", &format!("version: '{version}'"))
    });
}

/// Copies the bundled package with its manifest text rewritten by `edit`.
pub fn bundled_copy_edit(dst: &Path, edit: impl Fn(String) -> String) {
    let mut files = bundled_entries();
    for (_, path, data) in &mut files {
        if path == Path::new("manifest.yaml") {
            *data = edit(String::from_utf8(data.clone()).expect("utf-8")).into_bytes();
        }
    }
    write_package(dst, files);
}

/// Every entry of the bundled package: header, path, bytes.
/// One file of the bundled package (`config.json`, `tokenizer.json`, `model.safetensors`).
pub fn bundled_file(name: &str) -> Vec<u8> {
    bundled_entries()
        .into_iter()
        .find(|(_, path, _)| path == Path::new(name))
        .map(|(_, _, data)| data)
        .unwrap_or_else(|| panic!("the bundled package has no {name}"))
}

fn bundled_entries() -> Vec<(tar::Header, PathBuf, Vec<u8>)> {
    let src = bundled_dir().join("all-MiniLM-L6-v2.tar.zst");
    let mut archive = tar::Archive::new(
        zstd::Decoder::new(std::fs::File::open(src).expect("open")).expect("zstd"),
    );
    let mut files = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        files.push((entry.header().clone(), path, data));
    }
    files
}

/// Writes `files` (in order) as a package at `dst`.
fn write_package(dst: &Path, files: Vec<(tar::Header, PathBuf, Vec<u8>)>) {
    let out = std::fs::File::create(dst).expect("create");
    let mut builder = tar::Builder::new(zstd::Encoder::new(out, 1).expect("zstd").auto_finish());
    for (mut header, path, data) in files {
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, &path, data.as_slice())
            .expect("append");
    }
    builder.finish().expect("finish");
}

/// Copies the bundled package under `id` with every value of the safetensors tensor `tensor`
/// (an f16 one) set to NaN, the manifest's size and sha256 of the weights updated: a package
/// that verifies and loads, and computes NaN.
pub fn bundled_copy_poisoned(dst: &Path, id: &str, tensor: &str) {
    use sha2::Digest;
    let mut files = bundled_entries();
    let weights = files
        .iter_mut()
        .find(|(_, p, _)| p == Path::new("model.safetensors"))
        .expect("model.safetensors");
    let data = &mut weights.2;
    let header_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&data[8..8 + header_len]).expect("header");
    let info = &header[tensor];
    assert_eq!(info["dtype"], "F16", "{tensor}: {info}");
    let start = 8 + header_len + info["data_offsets"][0].as_u64().expect("offset") as usize;
    let end = 8 + header_len + info["data_offsets"][1].as_u64().expect("offset") as usize;
    for pair in data[start..end].chunks_exact_mut(2) {
        pair.copy_from_slice(&0x7e00u16.to_le_bytes());
    }
    let (size, sha) = (data.len(), hex::encode(sha2::Sha256::digest(&data[..])));
    let manifest = files
        .iter_mut()
        .find(|(_, p, _)| p == Path::new("manifest.yaml"))
        .expect("manifest");
    let text = String::from_utf8(manifest.2.clone()).expect("utf-8");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "- path: model.safetensors" {
            out.push(line.to_string());
            out.push(format!("  size: {size}"));
            out.push(format!("  sha256: {sha}"));
            lines.next();
            lines.next();
        } else if line.starts_with("id: ") {
            out.push(format!("id: {id}"));
        } else {
            out.push(line.to_string());
        }
    }
    manifest.2 = (out.join("\n") + "\n").into_bytes();
    write_package(dst, files);
}
