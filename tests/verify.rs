//! The package verifier against hostile packages, built here byte by byte so each breaks exactly
//! one rule; each must be refused with its own reason.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/hostile.rs"]
mod hostile;

use caxton::package::PackageError;
use caxton::package::verify::{DiscardSink, verify_file};
use hostile::*;

fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("pkg.tar.zst");
    std::fs::write(&p, bytes).expect("write");
    p
}

fn verdict(bytes: &[u8]) -> Result<(), PackageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    verify_file(&write(dir.path(), bytes), &mut DiscardSink).map(|_| ())
}

fn kind(bytes: &[u8]) -> (&'static str, String) {
    let e = verdict(bytes).expect_err("must be refused");
    (e.kind(), e.to_string())
}

#[test]
fn every_package_of_the_hostile_corpus_is_refused_with_its_own_reason() {
    for (name, bytes, expected) in corpus() {
        assert_eq!(kind(&bytes).0, expected, "{name}");
    }
}

#[test]
fn a_well_formed_package_verifies() {
    let files = good_files();
    verdict(&standard(&manifest_for(&files), &files)).expect("valid");
}

#[test]
fn content_that_differs_from_the_manifest_is_refused() {
    let files = good_files();
    let m = manifest_for(&files);
    let tampered = with_weights(b"0123456780");
    let (k, msg) = kind(&standard(&m, &tampered));
    assert_eq!(k, "sha256_mismatch");
    assert!(
        msg.starts_with("sha256 mismatch for \"model.safetensors\""),
        "{msg}"
    );

    let longer = with_weights(b"01234567890");
    let (k, msg) = kind(&standard(&m, &longer));
    assert_eq!(k, "size_mismatch");
    assert_eq!(
        msg,
        "size mismatch for \"model.safetensors\": the manifest says 10 bytes, the package has 11"
    );

    let (k, msg) = kind(&standard(&m, &files[..2]));
    assert_eq!(
        (k, msg.as_str()),
        (
            "missing_entry",
            "listed in the manifest but missing from the package: model.safetensors"
        )
    );

    let mut extra = files.clone();
    extra.push(("notes.txt", b"hi"));
    let (k, msg) = kind(&standard(&m, &extra));
    assert_eq!(
        (k, msg.as_str()),
        (
            "extra_entry",
            "entry \"notes.txt\" is not listed in the manifest"
        )
    );

    let mut dup = files.clone();
    dup.push(("config.json", CONFIG));
    assert_eq!(kind(&standard(&m, &dup)).0, "duplicate_entry");
}

#[test]
fn unsafe_entries_are_refused() {
    let with = with_extra;
    let (k, msg) = kind(&with(file("../escape", b"x")));
    assert_eq!(
        (k, msg.as_str()),
        (
            "unsafe_entry",
            "unsafe entry \"../escape\": the path contains `..`"
        )
    );
    let (k, msg) = kind(&with(file("/etc/cron.d/x", b"x")));
    assert_eq!(
        (k, msg.as_str()),
        (
            "unsafe_entry",
            "unsafe entry \"/etc/cron.d/x\": the path is absolute"
        )
    );
    for (kind_, what) in [
        (tar::EntryType::Symlink, "a symbolic link"),
        (tar::EntryType::Link, "a hard link"),
        (tar::EntryType::Char, "a character device"),
        (tar::EntryType::Block, "a block device"),
        (tar::EntryType::Fifo, "a FIFO"),
        (tar::EntryType::Directory, "a directory"),
    ] {
        let e = Entry {
            name: "model.bin".into(),
            kind: kind_,
            data: Vec::new(),
            header_size: None,
            link: Some("/etc/passwd".into()),
        };
        let (k, msg) = kind(&with(e));
        assert_eq!(k, "unsafe_entry");
        assert_eq!(
            msg,
            format!("unsafe entry \"model.bin\": it is {what}; only regular files are allowed")
        );
    }
}

#[test]
fn the_manifest_must_come_first_and_be_valid() {
    let files = good_files();
    let m = manifest_for(&files);
    let mut entries: Vec<Entry> = files.iter().map(|(n, d)| file(n, d)).collect();
    entries.push(file("manifest.yaml", m.as_bytes()));
    let (k, msg) = kind(&package(entries));
    assert_eq!(
        (k, msg.as_str()),
        (
            "manifest_not_first",
            "the first entry must be manifest.yaml, found \"config.json\""
        )
    );

    assert_eq!(kind(&package(Vec::new())).0, "manifest_missing");

    let (k, msg) = kind(&standard(
        &m.replace("normalize: true", "normalize: true\ncolour: blue"),
        &files,
    ));
    assert_eq!(k, "manifest_invalid");
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let (k, msg) = kind(&standard(
        &m.replace("architecture: bert", "architecture: gpt2"),
        &files,
    ));
    assert_eq!(k, "manifest_invalid");
    assert!(msg.contains("unknown variant `gpt2`"), "{msg}");
    let (k, msg) = kind(&standard(&m.replace("id: tiny", "id: \"../x\""), &files));
    assert_eq!(
        (k, msg.as_str()),
        (
            "manifest_invalid",
            "invalid manifest: id: \"../x\" is not 1 to 128 of [A-Za-z0-9._-]"
        )
    );

    let (k, msg) = kind(&standard(
        &m.replace("dimensions: 4", "dimensions: 8"),
        &files,
    ));
    assert_eq!(
        (k, msg.as_str()),
        (
            "manifest_invalid",
            "invalid manifest: dimensions: the manifest says 8, config.json hidden_size is 4"
        )
    );

    let huge = format!("{m}# {}\n", "x".repeat(70_000));
    let (k, msg) = kind(&standard(&huge, &files));
    assert_eq!(k, "manifest_invalid");
    assert!(msg.contains("the limit is 65536"), "{msg}");
}

#[test]
fn broken_streams_are_refused() {
    let files = good_files();
    let good = standard(&manifest_for(&files), &files);
    let (k, _) = kind(&good[..good.len() - 20]);
    assert!(k == "truncated" || k == "corrupt", "{k}");
    let (k, msg) = kind(b"PK\x03\x04 definitely a zip file");
    assert_eq!(
        (k, msg.as_str()),
        (
            "not_zstd",
            "not a zstd-compressed package: the file does not start with the zstd magic number"
        )
    );
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(kind(&random).0, "not_zstd");
    // Valid zstd, not a tar.
    assert!(
        verdict(&zstd(
            b"hello, not a tar archive at all, just text padding it out"
        ))
        .is_err()
    );
}

#[test]
fn a_zstd_bomb_stops_at_the_declared_size() {
    let files = good_files();
    let m = manifest_for(&files);
    // 1 GiB of zeros after a valid archive: the trailer may only be tar padding of bounded size.
    let bomb = bomb();
    assert!(
        bomb.len() < 1 << 20,
        "the bomb itself is small ({} bytes)",
        bomb.len()
    );
    let (k, msg) = kind(&bomb);
    assert_eq!(
        (k, msg.as_str()),
        (
            "decompression_bound",
            "decompresses past the sizes its manifest declares; stopped there"
        )
    );

    // A header that claims 1 GiB for a file the manifest declares as 10 bytes is refused before
    // a byte of it is read.
    let mut entries = vec![file("manifest.yaml", m.as_bytes())];
    entries.extend(files.iter().take(2).map(|(n, d)| file(n, d)));
    entries.push(Entry {
        name: "model.safetensors".into(),
        kind: tar::EntryType::Regular,
        data: Vec::new(),
        header_size: Some(1 << 30),
        link: None,
    });
    let (k, _) = kind(&package(entries));
    assert_eq!(k, "size_mismatch");
}

#[test]
fn the_sidecar_checksum_must_match_when_present() {
    let files = good_files();
    let bytes = standard(&manifest_for(&files), &files);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), &bytes);
    let sidecar = dir.path().join("pkg.tar.zst.sha256");
    std::fs::write(&sidecar, format!("{}  pkg.tar.zst\n", sha(&bytes))).expect("write");
    verify_file(&p, &mut DiscardSink).expect("matching sidecar");
    std::fs::write(&sidecar, format!("{}  pkg.tar.zst\n", sha(b"other"))).expect("write");
    let e = verify_file(&p, &mut DiscardSink).expect_err("mismatch");
    assert_eq!(e.kind(), "sidecar_mismatch");
    assert!(e.to_string().contains("the package has"), "{e}");
    std::fs::write(&sidecar, format!("{}  other.tar.zst\n", sha(&bytes))).expect("write");
    let e = verify_file(&p, &mut DiscardSink).expect_err("wrong name");
    assert!(
        e.to_string()
            .contains("is for other.tar.zst, not pkg.tar.zst"),
        "{e}"
    );
}

#[test]
fn a_fifo_sidecar_is_refused_without_hanging() {
    let files = good_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), &standard(&manifest_for(&files), &files));
    nix::unistd::mkfifo(
        &dir.path().join("pkg.tar.zst.sha256"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .expect("mkfifo");
    let e = verify_file(&p, &mut DiscardSink).expect_err("a FIFO is not a sidecar");
    assert_eq!(e.kind(), "sidecar_mismatch");
    assert!(e.to_string().contains("is not a regular file"), "{e}");
}

/// A package that verifies (`good.tar.zst`) and one missing the weights its manifest lists
/// (`bad.tar.zst`), in `dir`.
fn good_and_bad(dir: &Path) -> (PathBuf, PathBuf) {
    let files = good_files();
    let good = dir.join("good.tar.zst");
    std::fs::write(&good, standard(&manifest_for(&files), &files)).expect("write");
    let bad = dir.join("bad.tar.zst");
    std::fs::write(&bad, standard(&manifest_for(&files), &files[..2])).expect("write");
    (good, bad)
}

#[test]
fn caxton_verify_exits_non_zero_naming_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, bad) = good_and_bad(dir.path());

    let run = |p: &Path| {
        Command::new(env!("CARGO_BIN_EXE_caxton"))
            .arg("verify")
            .arg(p)
            .output()
            .expect("run")
    };
    let out = run(&good);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: tiny version 1, 3 files"));
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.tar.zst: rejected (missing_entry): listed in the manifest but missing from the package: model.safetensors"), "{err}");

    let bundled =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bundled-models/all-MiniLM-L6-v2.tar.zst");
    let out = run(&bundled);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn caxton_verify_json_gives_each_file_s_manifest_or_reason_on_a_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, bad) = good_and_bad(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_caxton"))
        .args(["verify", "--json"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "one file is refused");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let [ok, refused] = &lines[..] else {
        panic!("two lines: {lines:?}");
    };
    assert_eq!(ok["file"], good.display().to_string());
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["manifest"]["id"], "tiny");
    assert_eq!(ok["manifest"]["version"], "1");
    assert_eq!(ok["manifest"]["files"].as_array().map(Vec::len), Some(3));
    assert_eq!(ok["package_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["kind"], "missing_entry");
    assert_eq!(
        refused["reason"],
        "listed in the manifest but missing from the package: model.safetensors"
    );
}
