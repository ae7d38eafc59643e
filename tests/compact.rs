//! Issue 52, goal 4, over the socket: compact vectors (`embedding_types`) on `/v1/embeddings`
//! and `/embed`. Against sentence-transformers' `quantize_embeddings` of its own MiniLM vectors
//! (`tests/fixtures/reference/minilm-compact.json`, fixed ranges [-1, 1]); a text's compact
//! vector the same alone and in a batch; after a Matryoshka cut; every refusal word for word.

mod common;

use base64::Engine as _;
use common::{Daemon, bundled_copy_edit, write_config};
use serde_json::{Value, json};

fn daemon() -> Daemon {
    Daemon::start_with(
        |dir| {
            write_config(dir, "");
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            bundled_copy_edit(&dir.join("packages/cut.tar.zst"), |m| {
                m.replace("id: all-MiniLM-L6-v2", "id: cut").replace(
                    "files:",
                    "matryoshka:\n  dimensions: [384, 256, 100]\nfiles:",
                )
            });
        },
        &[],
    )
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/minilm-compact.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap_or_else(|| panic!("not an integer: {x}")))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn decode(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().expect("base64 text"))
        .expect("base64")
}

/// The bytes as a client reads a type's integers: int8 and binary as two's complement.
fn bytes(values: &[i64]) -> Vec<u8> {
    values.iter().map(|&x| x as i8 as u8).collect()
}

#[test]
fn compact_vectors_match_sentence_transformers_quantization() {
    let d = daemon();
    let r = reference();
    let texts: Vec<Value> = r["texts"].as_array().expect("texts").clone();
    let types = ["float", "int8", "uint8", "binary", "ubinary"];
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": texts, "embedding_types": types}),
    );
    assert_eq!(s, 200, "{v}");
    let (mut differing, mut total, mut bits_differing) = (0usize, 0usize, 0usize);
    for (i, item) in v["data"].as_array().expect("data").iter().enumerate() {
        assert!(item.get("embedding").is_none(), "{item}");
        let e = &item["embeddings"];
        let keys: Vec<&String> = e.as_object().expect("embeddings").keys().collect();
        // (Read back sorted: serde_json's map here keeps no order.)
        assert_eq!(keys, ["binary", "float", "int8", "ubinary", "uint8"]);
        let float = floats(&e["float"]);
        assert_eq!(float.len(), 384);
        for name in ["int8", "uint8"] {
            let ours = ints(&e[name]);
            let theirs = decode(&r[name][i]);
            assert_eq!(ours.len(), 384);
            for (k, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                let b = if name == "int8" {
                    i64::from(b as i8)
                } else {
                    i64::from(b)
                };
                // The bundled package stores f16 weights, so its floats differ from
                // sentence-transformers' (f32) by up to ~1e-4: a value near a step's edge may
                // fall on the step beside (about 0.5% of them); never further.
                assert!((a - b).abs() <= 1, "text {i} {name}[{k}]: {a} vs {b}");
                differing += usize::from(a != b);
                total += 1;
            }
        }
        for name in ["binary", "ubinary"] {
            // Both as packbits' bytes: binary is each minus 128.
            let shift = if name == "binary" { 128 } else { 0 };
            let unsigned =
                |b: Vec<u8>| -> Vec<u8> { b.iter().map(|x| x.wrapping_add(shift)).collect() };
            let ours = unsigned(bytes(&ints(&e[name])));
            let theirs = unsigned(decode(&r[name][i]));
            assert_eq!(ours.len(), 48);
            for (k, x) in float.iter().enumerate() {
                let bit = |b: &[u8]| b[k / 8] >> (7 - k % 8) & 1;
                let (a, b) = (bit(&ours), bit(&theirs));
                // Our own bit is our float's sign, exactly.
                assert_eq!(a, u8::from(*x > 0.0), "text {i} {name} bit {k}");
                if a != b {
                    assert!(x.abs() < 1e-4, "text {i} {name} bit {k}: {x}");
                    bits_differing += 1;
                }
            }
        }
    }
    let texts = texts.len();
    println!(
        "{texts} texts: int8/uint8 values one step from sentence-transformers': {differing} of {total}; sign bits differing: {bits_differing} of {}",
        texts * 384 * 2
    );
    assert!(differing * 100 <= total, "{differing} of {total}");
}

#[test]
fn a_compact_vector_is_the_same_alone_and_in_a_batch_and_in_base64() {
    let d = daemon();
    let batch = [
        "red shoes",
        "a quiet harbour at dawn",
        "ERR_CONN_RESET 0x80004005",
    ];
    for ty in ["int8", "uint8", "binary", "ubinary"] {
        let (s, all) = post(
            &d,
            "/v1/embeddings",
            json!({"input": batch, "embedding_types": [ty]}),
        );
        assert_eq!(s, 200, "{all}");
        let (s, packed) = post(
            &d,
            "/v1/embeddings",
            json!({"input": batch, "embedding_types": ty, "encoding_format": "base64"}),
        );
        assert_eq!(s, 200, "{packed}");
        for (i, text) in batch.iter().enumerate() {
            let (s, one) = post(
                &d,
                "/embed",
                json!({"inputs": text, "embedding_types": [ty]}),
            );
            assert_eq!(s, 200, "{one}");
            let in_batch = ints(&all["data"][i]["embedding"]);
            assert_eq!(ints(&one[0]), in_batch, "{ty} {text}");
            assert_eq!(
                decode(&packed["data"][i]["embedding"]),
                bytes(&in_batch),
                "{ty} {text}"
            );
        }
    }
    // `/embed` with several types: Cohere's shape, a list of vectors per type.
    let (s, v) = post(
        &d,
        "/embed",
        json!({"inputs": batch, "embedding_types": ["ubinary", "float"]}),
    );
    assert_eq!(s, 200, "{v}");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["float", "ubinary"]);
    assert_eq!(v["float"].as_array().map(Vec::len), Some(3));
    assert_eq!(ints(&v["ubinary"][2]).len(), 48);
    // `normalize: false` leaves floats as the pool made them; int8 is of the unit vector.
    let (_, raw) = post(
        &d,
        "/embed",
        json!({"inputs": batch[0], "normalize": false, "embedding_types": ["float", "int8"]}),
    );
    let (_, unit) = post(
        &d,
        "/embed",
        json!({"inputs": batch[0], "embedding_types": ["float", "int8"]}),
    );
    let norm: f32 = floats(&raw["float"][0])
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt();
    assert!((norm - 1.0).abs() > 0.01, "{norm}");
    let (a, b) = (ints(&raw["int8"][0]), ints(&unit["int8"][0]));
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1),
        "{a:?} {b:?}"
    );
}

#[test]
fn compact_vectors_follow_a_matryoshka_cut() {
    let d = daemon();
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"model": "cut", "input": "Lisbon is warm in September", "dimensions": 100,
               "embedding_types": ["float", "binary", "int8"]}),
    );
    assert_eq!(s, 200, "{v}");
    let e = &v["data"][0]["embeddings"];
    let float = floats(&e["float"]);
    assert_eq!(float.len(), 100);
    assert_eq!(ints(&e["int8"]).len(), 100);
    let bits = bytes(&ints(&e["binary"]));
    // 100 bits: 13 bytes, the last four bits zero.
    assert_eq!(bits.len(), 13);
    let unsigned: Vec<u8> = bits.iter().map(|b| b.wrapping_add(128)).collect();
    for (k, x) in float.iter().enumerate() {
        assert_eq!(
            unsigned[k / 8] >> (7 - k % 8) & 1,
            u8::from(*x > 0.0),
            "bit {k}"
        );
    }
    assert_eq!(unsigned[12] & 0x0f, 0);
}

#[test]
fn bad_embedding_types_are_refused_word_for_word() {
    let d = daemon();
    let list = "send one of \"float\", \"int8\", \"uint8\", \"binary\", \"ubinary\" or a list of them, each at most once";
    for (path, field, types, what) in [
        ("/v1/embeddings", "input", json!([]), "is an empty list"),
        (
            "/v1/embeddings",
            "input",
            json!(["int4"]),
            "has \"int4\", which is not a type",
        ),
        (
            "/embed",
            "inputs",
            json!(["float", "float"]),
            "lists \"float\" twice",
        ),
        (
            "/embed",
            "inputs",
            json!({"int8": true}),
            "is {\"int8\":true}",
        ),
    ] {
        let (s, v) = post(&d, path, json!({field: "a", "embedding_types": types}));
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_embedding_types", "{v}");
        assert_eq!(
            v["error"]["message"],
            format!("`embedding_types` {what}; {list}"),
            "{path} {types}"
        );
    }
}
