//! The bundled all-MiniLM-L6-v2 package, in process (no daemon, no socket), against
//! sentence-transformers on the reference texts, f32 and int8 on this CPU's best kernels.
//!
//! It is the fidelity proof that runs where a daemon cannot: CI runs it for aarch64 under
//! qemu-user (tests/aarch64/run), where it proves the NEON kernels end to end; on x86-64 it
//! repeats, cheaply, what tests/fidelity.rs proves over the socket.
//!
//! `CAXTON_REFERENCE_MAX_TOKENS=N` keeps only the texts of at most N tokens: emulation is
//! slow, and the short texts are where quantization errs most (a few tokens whose vectors
//! cancel in the mean).

mod common;

use caxton::engine::Precision;
use caxton::engine::kernels::int8::Kernel;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    token_counts: Vec<usize>,
    vectors: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/minilm-vectors.json"
    );
    let mut r: Reference = serde_json::from_slice(&std::fs::read(path).expect("reference file"))
        .expect("reference JSON");
    if let Ok(max) = std::env::var("CAXTON_REFERENCE_MAX_TOKENS") {
        let max: usize = max.parse().expect("CAXTON_REFERENCE_MAX_TOKENS: a number");
        let short: Vec<usize> = (0..r.texts.len())
            .filter(|&i| r.token_counts[i] <= max)
            .collect();
        r = Reference {
            texts: short.iter().map(|&i| r.texts[i].clone()).collect(),
            token_counts: short.iter().map(|&i| r.token_counts[i]).collect(),
            vectors: short.iter().map(|&i| r.vectors[i].clone()).collect(),
        };
        assert!(
            !r.texts.is_empty(),
            "no reference text has {max} tokens or fewer"
        );
    }
    r
}

/// Embeds the reference texts in `precision`: each text's tokens and vector must match
/// sentence-transformers' (min cosine `min`), and batches must equal singles.
fn holds(precision: Precision, min: f64) {
    let r = reference();
    let tmp = tempfile::tempdir().expect("tempdir");
    let package = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bundled-models/all-MiniLM-L6-v2.tar.zst"
    );
    let run = common::engine::run_package(
        std::path::Path::new(package),
        &tmp.path().join("state"),
        &r.texts,
        precision,
    );
    assert_eq!(run.precision, precision);
    assert_eq!(
        run.tokens, r.token_counts,
        "token counts differ from sentence-transformers"
    );
    let label = format!(
        "all-MiniLM-L6-v2 ({} texts, {} tokens, {} kernel)",
        r.texts.len(),
        run.tokens.iter().sum::<usize>(),
        caxton::engine::kernels::kernel_name(precision),
    );
    run.holds(&r.vectors, min, &label);
}

#[test]
fn f32_matches_sentence_transformers_in_process() {
    holds(Precision::F32, 0.9999);
}

#[test]
fn int8_stays_within_0_999_of_sentence_transformers_in_process() {
    // The kernel this runs on is the one a device would: NEON on aarch64.
    if cfg!(target_arch = "aarch64") && std::env::var_os("CAXTON_ISA").is_none() {
        assert_eq!(Kernel::best(), Kernel::Neon);
    }
    holds(Precision::Int8, 0.999);
}

#[test]
fn int8_fast_stays_within_its_floor_of_sentence_transformers_in_process() {
    // The kernel this runs on is the one a device would: sdot where aarch64 has it.
    if cfg!(target_arch = "aarch64") && std::env::var_os("CAXTON_ISA").is_none() {
        assert_eq!(
            caxton::engine::kernels::int8_fast::Kernel::best(),
            caxton::engine::kernels::int8_fast::Kernel::here()[0]
        );
    }
    holds(Precision::Int8Fast, 0.997);
}
