//! The vectors do not depend on how many compute threads cut the work. A machine of 16 cores
//! cuts a layer's product into more, smaller tasks than one of 2 (`kernels::tasks`: chunks
//! of rows × panels in f32, tiles of fewer panels in int8 and int8-fast); the real daemon,
//! run with `RAYON_NUM_THREADS=16` on whatever this machine has, must answer what it answers
//! with 2, for a batch (the gemm path) and for one text (the few-row and one-text tiles).

mod common;

use common::{Daemon, write_config, write_precisions};

const MODEL: &str = "all-MiniLM-L6-v2";

/// Texts of 3 to 33 words: 40 of them are several hundred rows, more than the few-row kernel
/// takes, in fewer blocks of 256 than 16 threads need two of each.
fn texts() -> Vec<String> {
    const WORDS: [&str; 12] = [
        "valve", "pressure", "north", "station", "reports", "a", "drop", "after", "the", "night",
        "shift", "operator",
    ];
    (0..40)
        .map(|i| {
            (0..3 + (i * 7) % 31)
                .map(|j| WORDS[(i * 5 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A daemon serving the bundled model in `precision` on a pool of `threads` compute threads.
fn daemon(precision: &str, threads: usize) -> Daemon {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            write_precisions(dir, &[(MODEL, precision)]);
        },
        &[("RAYON_NUM_THREADS", &threads.to_string())],
    );
    let pid = d.child.as_ref().expect("running").id();
    let pool = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the daemon's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("caxton-compute"))
        .count();
    assert_eq!(
        pool, threads,
        "compute threads of a daemon asked for {threads}"
    );
    d
}

/// The batch's vectors, then the longest text's alone (35 rows: the few-row kernel's chunks
/// of rows on 16 threads).
fn vectors(d: &Daemon, texts: &[&str]) -> Vec<Vec<f32>> {
    let (mut all, _) = d.embed(texts);
    let longest = texts.iter().max_by_key(|t| t.len()).expect("texts");
    all.extend(d.embed(&[longest]).0);
    all
}

#[test]
fn sixteen_compute_threads_answer_what_two_do() {
    let texts = texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for precision in ["f32", "int8", "int8-fast"] {
        let two = vectors(&daemon(precision, 2), &texts);
        let sixteen = vectors(&daemon(precision, 16), &texts);
        assert_eq!(two.len(), texts.len() + 1);
        // Integer sums are exact whatever the tiles; f32 products may add in another order
        // where gemm blocks a chunk differently, which moves the last bits only.
        let worst = two
            .iter()
            .zip(&sixteen)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        println!("{precision}: largest difference between 2 and 16 threads {worst:e}");
        assert!(
            worst <= 1e-5,
            "{precision}: 16 threads differ from 2 by {worst}"
        );
    }
}
