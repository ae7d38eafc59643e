//! What `infer` makes of cross-encoder configs, of Qwen3 rerankers, and of bi-encoder folders' Pooling modules.

use super::*;

/// A cross-encoder folder with `config` as config.json and, when given, tokenizer_config.json.
fn folder(config: serde_json::Value, tokenizer_max: Option<f64>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    if let Some(m) = tokenizer_max {
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::json!({"model_max_length": m}).to_string(),
        )
        .expect("write");
    }
    dir
}

fn bert(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "model_type": "bert", "hidden_size": 32, "max_position_embeddings": 512,
        "architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"},
    });
    c.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    c
}

/// A bi-encoder folder (BERT, 32 wide) whose Pooling module's config.json is `pooling`.
fn with_pooling(pooling: serde_json::Value) -> Result<Inferred, PackageError> {
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": 32, "max_position_embeddings": 512,
        "architectures": ["BertModel"],
    });
    let dir = folder(config, None);
    let d = dir.path();
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    ]);
    std::fs::write(d.join("modules.json"), modules.to_string()).expect("write");
    std::fs::create_dir(d.join("1_Pooling")).expect("mkdir");
    std::fs::write(d.join("1_Pooling/config.json"), pooling.to_string()).expect("write");
    std::fs::write(
        d.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 128}"#,
    )
    .expect("write");
    infer(d)
}

#[test]
fn pooling_is_read_in_sentence_transformers_6_and_older_terms() {
    use serde_json::json;
    let pooling = |p: serde_json::Value| with_pooling(p).map(|i| i.pooling);
    assert_eq!(
        pooling(json!({"embedding_dimension": 32, "pooling_mode": "lasttoken"})).ok(),
        Some(Pooling::LastToken)
    );
    assert_eq!(
        pooling(json!({"word_embedding_dimension": 32, "pooling_mode_cls_token": true})).ok(),
        Some(Pooling::Cls)
    );
    // No mode at all is mean, as sentence-transformers reads it.
    assert_eq!(
        pooling(json!({"word_embedding_dimension": 32})).ok(),
        Some(Pooling::Mean)
    );
    let refused = |p: serde_json::Value| with_pooling(p).err().map(|e| e.to_string());
    assert_eq!(
        refused(json!({"embedding_dimension": 32, "pooling_mode": ["mean", "max"]})).as_deref(),
        Some(
            "unusable model: 1_Pooling/config.json: pooling mode mean + max is not supported (one of mean, cls, lasttoken)"
        )
    );
    assert_eq!(
        refused(json!({"pooling_mode": "mean", "include_prompt": false})).as_deref(),
        Some(
            "unusable model: 1_Pooling/config.json: include_prompt: false (the prompt's tokens left out of the mean) is not supported"
        )
    );
    assert_eq!(
        refused(json!({"embedding_dimension": 16, "pooling_mode": "mean"})).as_deref(),
        Some(
            "unusable model: 1_Pooling/config.json: word_embedding_dimension 16 differs from hidden_size 32"
        )
    );
}

#[test]
fn model_types_and_module_paths_of_every_version_are_read() {
    assert_eq!(architecture(Some("new")).ok(), Some(Architecture::Gte));
    assert_eq!(
        architecture(Some("nomic_bert")).ok(),
        Some(Architecture::NomicBert)
    );
    assert_eq!(
        architecture(Some("gemma3_text")).ok(),
        Some(Architecture::Gemma3)
    );
    assert_eq!(architecture(Some("qwen3")).ok(), Some(Architecture::Qwen3));
    assert_eq!(
        architecture(Some("llama"))
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some(
            "unusable model: config.json: model_type \"llama\" is not supported (supported: bert, distilbert, xlm-roberta, mpnet, nomic_bert, modernbert, new, gte, qwen3, gemma3_text, clip, siglip)"
        )
    );
    assert_eq!(
        module_class("sentence_transformers.models.Dense"),
        Some("Dense")
    );
    assert_eq!(
        module_class("sentence_transformers.base.modules.dense.Dense"),
        Some("Dense")
    );
    assert_eq!(module_class("my_package.Dense"), None);
}

#[test]
fn every_sentence_transformers_version_s_activation_is_read() {
    // 2 and 3: a top-level key, written only when set.
    let d = folder(
        bert(
            serde_json::json!({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}),
        ),
        Some(512.0),
    );
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(
        (
            i.kind,
            i.labels,
            i.activation,
            i.pooling,
            i.normalize,
            i.max_seq_length
        ),
        (
            ModelKind::Reranker,
            Some(1),
            Some(ScoreActivation::Identity),
            Pooling::Cls,
            false,
            512
        )
    );
    // 4 and 5: under `sentence_transformers`.
    let d = folder(
        bert(
            serde_json::json!({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Tanh", "version": "4.1.0"}}),
        ),
        Some(128.0),
    );
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(
        (i.activation, i.max_seq_length),
        (Some(ScoreActivation::Tanh), 128)
    );
    // None saved (a plain transformers folder): CrossEncoder's default for one label; a
    // tokenizer without a limit (transformers' sentinel) leaves the positions.
    let d = folder(bert(serde_json::json!({})), Some(1e30));
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(
        (i.activation, i.max_seq_length),
        (Some(ScoreActivation::Sigmoid), 512)
    );
    // XLM-R's positions start after the padding id.
    let d = folder(
        serde_json::json!({"model_type": "xlm-roberta", "hidden_size": 32,
            "max_position_embeddings": 514, "pad_token_id": 1, "num_labels": 1,
            "architectures": ["XLMRobertaForSequenceClassification"]}),
        None,
    );
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(
        (i.architecture, i.max_seq_length),
        (Architecture::XlmRoberta, 512)
    );
    // Several labels are read as they are (the manifest then refuses a classifier).
    let d = folder(
        bert(serde_json::json!({"id2label": {"0": "a", "1": "b", "2": "c"}})),
        None,
    );
    let i = infer(d.path()).expect("read");
    assert_eq!(
        (i.labels, i.activation),
        (Some(3), Some(ScoreActivation::Identity))
    );
}

#[test]
fn unsupported_cross_encoders_are_refused_naming_the_file_and_value() {
    let d = folder(
        bert(
            serde_json::json!({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.ReLU"}}),
        ),
        None,
    );
    assert_eq!(
        infer(d.path()).err().map(|e| e.to_string()).as_deref(),
        Some(
            "unusable model: config.json: sentence_transformers.activation_fn: torch.nn.modules.activation.ReLU is not supported (torch.nn.modules.activation.Sigmoid, torch.nn.modules.linear.Identity, torch.nn.modules.activation.Tanh)"
        )
    );
    let d = folder(
        serde_json::json!({"model_type": "distilbert", "dim": 32,
            "architectures": ["DistilBertForSequenceClassification"]}),
        None,
    );
    assert_eq!(
        infer(d.path()).err().map(|e| e.to_string()).as_deref(),
        Some(
            "unusable model: config.json: a distilbert cross-encoder is not supported (rerankers: bert, xlm-roberta, qwen3)"
        )
    );
}

/// A Qwen3 folder (32 wide) with `architectures`, a tokenizer whose vocabulary is `words`,
/// and `files` beside them.
fn qwen3(architectures: &[&str], words: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = folder(
        serde_json::json!({"model_type": "qwen3", "hidden_size": 32,
            "max_position_embeddings": 40960, "architectures": architectures}),
        Some(131072.0),
    );
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []}});
    std::fs::write(d.path().join("tokenizer.json"), tokenizer.to_string()).expect("write");
    for (name, text) in files {
        if let Some(parent) = std::path::Path::new(name).parent() {
            std::fs::create_dir_all(d.path().join(parent)).expect("mkdir");
        }
        std::fs::write(d.path().join(name), text).expect("write");
    }
    d
}

#[test]
fn qwen3_rerankers_read_their_card_s_template_and_last_token() {
    // As Qwen ships Qwen3-Reranker: a causal language model, no sentence-transformers files.
    let d = qwen3(&["Qwen3ForCausalLM"], &["a", "no", "yes"], &[]);
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(
        (i.kind, i.architecture),
        (ModelKind::Reranker, Architecture::Qwen3)
    );
    assert_eq!(
        (i.labels, i.activation),
        (Some(1), Some(ScoreActivation::Sigmoid))
    );
    assert_eq!((i.pooling, i.normalize), (Pooling::LastToken, false));
    assert_eq!(i.pair_template, Some(PairTemplate::qwen3_reranker()));
    assert_eq!(i.logit_rows, Some((2, 1)), "yes and no");
    // The card's 8,192, not the tokenizer's 131,072.
    assert_eq!(i.max_seq_length, 8192);

    // As sentence-transformers 6 saves it: LogitScore's ids, its saved length.
    let d = qwen3(
        &["Qwen3ForCausalLM"],
        &["yes", "no"],
        &[
            (
                "config_sentence_transformers.json",
                r#"{"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.activation.Sigmoid"}"#,
            ),
            (
                "modules.json",
                r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
                {"idx": 1, "name": "1", "path": "1_LogitScore", "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"}]"#,
            ),
            (
                "1_LogitScore/config.json",
                r#"{"true_token_id": 7, "false_token_id": 5, "module_input_name": "causal_logits"}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"max_seq_length": 1024, "transformer_task": "text-generation"}"#,
            ),
        ],
    );
    let i = infer(d.path()).expect("a reranker");
    assert_eq!((i.logit_rows, i.max_seq_length), (Some((7, 5)), 1024));

    // Converted to sequence classification: its own score row, its labels.
    let d = qwen3(&["Qwen3ForSequenceClassification"], &["a"], &[]);
    let d_config = d.path().join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&d_config).expect("read")).expect("json");
    c["num_labels"] = serde_json::json!(1);
    std::fs::write(&d_config, c.to_string()).expect("write");
    let i = infer(d.path()).expect("a reranker");
    assert_eq!((i.labels, i.logit_rows), (Some(1), None));
    assert_eq!(i.pooling, Pooling::LastToken);
}

#[test]
fn a_qwen3_reranker_without_yes_and_no_is_refused_by_file() {
    let d = qwen3(&["Qwen3ForCausalLM"], &["yes", "maybe"], &[]);
    let err = infer(d.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.ends_with("tokenizer.json: no token \"no\"; a causal reranker's score is its \"yes\" logit against its \"no\""),
        "{err}"
    );
    let d = qwen3(
        &["Qwen3ForCausalLM"],
        &["yes", "no"],
        &[
            (
                "modules.json",
                r#"[{"idx": 1, "name": "1", "path": "1_LogitScore", "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"}]"#,
            ),
            (
                "1_LogitScore/config.json",
                r#"{"true_token_id": 7, "false_token_id": null}"#,
            ),
        ],
    );
    let err = infer(d.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.ends_with("1_LogitScore/config.json: false_token_id is null; only a reranker that scores a true token against a false one is supported"),
        "{err}"
    );
}

#[test]
fn qwen3_embedding_s_causal_folder_stays_an_embedder() {
    // Qwen3-Embedding's config.json names Qwen3ForCausalLM too; its Pooling module decides.
    let d = qwen3(
        &["Qwen3ForCausalLM"],
        &["yes", "no"],
        &[
            (
                "modules.json",
                r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"embedding_dimension": 32, "pooling_mode": "lasttoken"}"#,
            ),
            ("sentence_bert_config.json", r#"{"max_seq_length": 512}"#),
        ],
    );
    let i = infer(d.path()).expect("an embedder");
    assert_eq!(
        (i.kind, i.pooling),
        (ModelKind::Embedding, Pooling::LastToken)
    );
    assert_eq!((i.pair_template, i.logit_rows), (None, None));
}

/// A BERT bi-encoder folder of `positions` whose sentence_bert_config.json has `saved` as its
/// `max_seq_length` (or no such key, as sentence-transformers 6 saves it) and whose
/// tokenizer_config.json has `tokenizer` as its `model_max_length`.
fn embedder(positions: usize, saved: Option<usize>, tokenizer: Option<f64>) -> Inferred {
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": 32, "max_position_embeddings": positions,
        "architectures": ["BertModel"],
    });
    let dir = folder(config, tokenizer);
    let d = dir.path();
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.base.modules.pooling.Pooling"}
    ]);
    std::fs::write(d.join("modules.json"), modules.to_string()).expect("write");
    std::fs::create_dir(d.join("1_Pooling")).expect("mkdir");
    std::fs::write(
        d.join("1_Pooling/config.json"),
        r#"{"embedding_dimension": 32, "pooling_mode": "mean"}"#,
    )
    .expect("write");
    let st = match saved {
        Some(n) => serde_json::json!({"max_seq_length": n, "do_lower_case": false}),
        None => serde_json::json!({"transformer_task": "feature-extraction"}),
    };
    std::fs::write(d.join("sentence_bert_config.json"), st.to_string()).expect("write");
    infer(d).expect("an embedder")
}

/// Issue 50: sentence-transformers 6 saves no `max_seq_length` and reads the tokenizer's
/// `model_max_length`; pack fell back to the positions instead (1,024 for a model set up for
/// 512). Its rule, case by case.
#[test]
fn an_embedder_s_length_follows_sentence_transformers_rule() {
    let length = |saved, tokenizer| embedder(1024, saved, tokenizer).max_seq_length;
    assert_eq!(
        length(Some(128), Some(512.0)),
        128,
        "the saved length first"
    );
    assert_eq!(length(None, Some(512.0)), 512, "then the tokenizer's");
    assert_eq!(length(None, Some(1e30)), 1024, "not transformers' sentinel");
    assert_eq!(length(None, None), 1024, "else the positions");
    assert_eq!(length(None, Some(4096.0)), 1024, "never past the positions");
    assert_eq!(length(Some(2048), None), 1024, "never past the positions");
    assert!(embedder(1024, None, Some(512.0)).length_note.is_none());
}

/// A model longer than a package may be is packed at the most a package takes, and says so.
#[test]
fn a_length_past_the_most_a_package_takes_is_cut_there_with_a_note() {
    let i = embedder(32768, None, Some(32768.0));
    assert_eq!(i.max_seq_length, 8192);
    assert_eq!(
        i.length_note.as_deref(),
        Some(
            "the model takes up to 32768 tokens (tokenizer_config.json: model_max_length), and a package at most 8192: packed with max_seq_length 8192, so longer texts are refused (or cut there with truncate: true) where sentence-transformers would run them whole"
        )
    );
    // Qwen3-Reranker saved by sentence-transformers 6 without a length: its tokenizer's
    // 131,072, within its 40,960 positions, within a package's 8,192.
    let d = qwen3(
        &["Qwen3ForCausalLM"],
        &["yes", "no"],
        &[
            (
                "modules.json",
                r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
                {"idx": 1, "name": "1", "path": "1_LogitScore", "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"}]"#,
            ),
            (
                "1_LogitScore/config.json",
                r#"{"true_token_id": 0, "false_token_id": 1}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"transformer_task": "text-generation"}"#,
            ),
            (
                "config_sentence_transformers.json",
                r#"{"model_type": "CrossEncoder"}"#,
            ),
        ],
    );
    let i = infer(d.path()).expect("a reranker");
    assert_eq!(i.max_seq_length, 8192);
    assert!(
        i.length_note
            .as_deref()
            .is_some_and(|n| n.starts_with("the model takes up to 40960 tokens")),
        "{:?}",
        i.length_note
    );
}

/// A cross-encoder's pair length follows the same rule (sentence-transformers 6 saves none).
#[test]
fn a_cross_encoder_s_length_follows_sentence_transformers_rule() {
    let d = folder(bert(serde_json::json!({})), Some(256.0));
    std::fs::write(
        d.path().join("sentence_bert_config.json"),
        r#"{"transformer_task": "sequence-classification"}"#,
    )
    .expect("write");
    assert_eq!(infer(d.path()).expect("reranker").max_seq_length, 256);
    std::fs::write(
        d.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 128}"#,
    )
    .expect("write");
    assert_eq!(infer(d.path()).expect("reranker").max_seq_length, 128);
}
