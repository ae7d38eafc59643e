//! Issue 2 fidelity: the real daemon, over the socket, against sentence-transformers' vectors
//! for the same weights (tests/fixtures/reference).

mod common;

use common::{Daemon, cosine};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    token_counts: Vec<u64>,
    vectors: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/minilm-vectors.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("reference file")).expect("reference JSON")
}

/// Every reference text in a request of its own: its vector, after checking its token count
/// against the reference and that the smallest cosine to the reference vectors is at least
/// `min_cosine` (printed with `label`).
fn singles(daemon: &Daemon, reference: &Reference, min_cosine: f64, label: &str) -> Vec<Vec<f32>> {
    let mut singles = Vec::new();
    let mut worst = (1.0f64, 0usize);
    for (i, text) in reference.texts.iter().enumerate() {
        let (v, tokens) = daemon.embed(&[text]);
        assert_eq!(
            tokens, reference.token_counts[i],
            "token count of text {i} ({text:.40?})"
        );
        let c = cosine(&v[0], &reference.vectors[i]);
        if c < worst.0 {
            worst = (c, i);
        }
        singles.push(v.into_iter().next().expect("one vector"));
    }
    println!(
        "{label}min cosine vs sentence-transformers: {:.7} (text {})",
        worst.0, worst.1
    );
    assert!(
        worst.0 >= min_cosine,
        "{label}text {} has cosine {} against the reference",
        worst.1,
        worst.0
    );
    singles
}

/// The reference texts' indices in a fixed scrambled order, so batches mix lengths.
fn scrambled(n: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 37) % n).collect()
}

#[test]
fn singles_and_mixed_batches_match_sentence_transformers() {
    let reference = reference();
    assert!(reference.texts.len() >= 100);
    let daemon = Daemon::start();

    let singles = singles(&daemon, &reference, 0.9999, "");

    // Mixed-length batches in a scrambled order: long and short texts share forward passes.
    let order = scrambled(reference.texts.len());
    let mut start = 0;
    let mut min_batch = 1.0f64;
    for size in [2usize, 7, 32, 50, 64].iter().cycle() {
        if start >= order.len() {
            break;
        }
        let chunk = &order[start..(start + size).min(order.len())];
        start += size;
        let texts: Vec<&str> = chunk.iter().map(|&i| reference.texts[i].as_str()).collect();
        let (vectors, tokens) = daemon.embed(&texts);
        assert_eq!(vectors.len(), chunk.len());
        assert_eq!(
            tokens,
            chunk
                .iter()
                .map(|&i| reference.token_counts[i])
                .sum::<u64>()
        );
        for (v, &i) in vectors.iter().zip(chunk) {
            min_batch = min_batch.min(cosine(v, &singles[i]));
            assert!(
                cosine(v, &reference.vectors[i]) >= 0.9999,
                "text {i} in a batch"
            );
        }
    }
    println!("min cosine batched vs single: {min_batch:.8}");
    assert!(min_batch >= 0.99999, "batched vs single: {min_batch}");
}

/// The daemon with `models.precision: PRECISION` for the bundled model (and `env`): every
/// reference text within `min_cosine` of sentence-transformers, batches of 32 equal to singles
/// (0.99999), and `GET /api/models` saying what it runs in and on which kernel. Returns the
/// daemon and the entry.
fn precision_holds(
    precision: &str,
    env: &[(&str, &str)],
    min_cosine: f64,
    label: &str,
) -> (Daemon, serde_json::Value) {
    let reference = reference();
    let daemon = Daemon::start_with(
        |dir| {
            common::write_config(
                dir,
                &format!("  precision:\n    all-MiniLM-L6-v2: {precision}\n"),
            )
        },
        env,
    );
    let singles = singles(&daemon, &reference, min_cosine, &format!("{label}: "));
    let entry = common::model_entry(&daemon, "all-MiniLM-L6-v2").expect("entry");
    assert_eq!(entry["precision"], precision);

    // All texts, 32 per request, scrambled: each equals its single-text vector.
    let order = scrambled(reference.texts.len());
    let mut min_batch = 1.0f64;
    for chunk in order.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|&i| reference.texts[i].as_str()).collect();
        let (vectors, _) = daemon.embed(&texts);
        for (v, &i) in vectors.iter().zip(chunk) {
            min_batch = min_batch.min(cosine(v, &singles[i]));
        }
    }
    println!("{label}: min cosine batched vs single: {min_batch:.8}");
    assert!(
        min_batch >= 0.99999,
        "{label}: batched vs single: {min_batch}"
    );
    (daemon, entry)
}

/// `models.precision: bf16`: within 0.999 of sentence-transformers, and the model says what
/// it runs in (f32, with the reason logged, on a CPU without AMX).
#[test]
fn bf16_stays_within_0_999_of_sentence_transformers() {
    let expected = caxton::engine::Precision::Bf16.on_this_machine().0.name();
    let (daemon, entry) = precision_holds("bf16", &[], 0.999, expected);
    assert_eq!(entry["loaded_precision"], expected, "{entry}");
    if expected == "f32" {
        assert!(
            daemon.log().contains("precision_fallback"),
            "{}",
            daemon.log()
        );
        common::skip::skip(
            "bf16 on the amx kernel: this CPU has no AMX (its f32 fallback was checked instead)",
        );
    }
}

/// `models.precision: int8` on the best kernel this CPU has, then forced down to AVX2 and to
/// the portable kernel (`CAXTON_ISA`), so every path is proved on any machine that has it
/// (NEON on aarch64): each within 0.999 of sentence-transformers, batches equal to singles, and the kernel
/// named in `GET /api/models` and the journal.
#[test]
fn int8_stays_within_0_999_of_sentence_transformers_on_every_kernel() {
    let best = caxton::engine::kernels::int8::Kernel::best().name();
    let mut runs = vec![(best, vec![])];
    let here: Vec<&str> = caxton::engine::kernels::int8::Kernel::here()
        .iter()
        .map(|k| k.name())
        .collect();
    for forced in ["avx-vnni", "avx2", "neon", "portable"] {
        if forced != best && here.contains(&forced) {
            runs.push((forced, vec![("CAXTON_ISA", forced)]));
        }
    }
    for (kernel, env) in runs {
        let (daemon, entry) = precision_holds("int8", &env, 0.999, &format!("int8 {kernel}"));
        assert_eq!(entry["loaded_precision"], "int8", "{entry}");
        assert_eq!(entry["kernel"], kernel, "{entry}");
        assert!(
            daemon
                .log()
                .contains(&format!("int8 on the {kernel} kernel")),
            "{}",
            daemon.log()
        );
    }
}

/// `models.precision: int8-fast` on the best kernel this CPU has, then forced down to AVX2 and
/// to the portable kernel (`CAXTON_ISA`; NEON and its dot product on aarch64): each within its
/// documented floor (0.997) of sentence-transformers, batches equal to singles, and the kernel
/// named in `GET /api/models` and the journal. Every kernel sums exactly the same integers, so
/// every run must give the same worst text.
#[test]
fn int8_fast_stays_within_its_floor_of_sentence_transformers_on_every_kernel() {
    use caxton::engine::kernels::int8_fast::Kernel;
    let best = Kernel::best().name();
    let mut runs = vec![(best, vec![])];
    let here: Vec<&str> = Kernel::here().iter().map(|k| k.name()).collect();
    for forced in ["avx-vnni", "avx2", "neon", "portable"] {
        if forced != best && here.contains(&forced) {
            runs.push((forced, vec![("CAXTON_ISA", forced)]));
        }
    }
    for (kernel, env) in runs {
        let label = format!("int8-fast {kernel}");
        let (daemon, entry) = precision_holds("int8-fast", &env, 0.997, &label);
        assert_eq!(entry["loaded_precision"], "int8-fast", "{entry}");
        assert_eq!(entry["kernel"], kernel, "{entry}");
        assert!(
            daemon
                .log()
                .contains(&format!("int8-fast on the {kernel} kernel")),
            "{}",
            daemon.log()
        );
    }
}

#[test]
fn sixty_four_concurrent_clients_are_batched_without_changing_vectors() {
    let reference = reference();
    let daemon = Daemon::start();
    let clients = 64;
    let texts: Vec<String> = reference
        .texts
        .iter()
        .cycle()
        .take(clients)
        .cloned()
        .collect();
    let batches_before = batches(&daemon);
    // Fire all requests at once from separate threads so the engine sees them queued together.
    let socket = daemon.socket.clone();
    let start = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let handles: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            let socket = socket.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                let body = serde_json::json!({"input": t}).to_string().into_bytes();
                let (status, bytes) = rt
                    .block_on(caxton::cli::client::request(
                        &socket,
                        hyper::Method::POST,
                        "/v1/embeddings",
                        Some(body),
                    ))
                    .expect("request");
                assert_eq!(status.as_u16(), 200);
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                v["data"][0]["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("f") as f32)
                    .collect::<Vec<f32>>()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.join().expect("thread");
        let c = cosine(&v, &reference.vectors[i % reference.vectors.len()]);
        assert!(c >= 0.9999, "text {i}: cosine {c}");
    }
    // Requests that queued while a pass ran shared the next one.
    let passes = batches(&daemon) - batches_before;
    assert!(
        passes < clients as u64,
        "{clients} concurrent single-text requests took {passes} forward passes"
    );
}

/// `caxton_batches_total`: forward passes the daemon has run.
fn batches(daemon: &Daemon) -> u64 {
    let (status, body) = daemon
        .raw_request("GET", "/metrics", None)
        .expect("metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix("caxton_batches_total ")?.parse().ok())
        .unwrap_or_else(|| panic!("no caxton_batches_total in:\n{text}"))
}
