//! What `infer` makes of cross-encoder configs and of bi-encoder folders' Pooling modules.

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
            "unusable model: config.json: model_type \"llama\" is not supported (supported: bert, distilbert, xlm-roberta, mpnet, nomic_bert, modernbert, new, gte, qwen3, gemma3_text)"
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
            "unusable model: config.json: a distilbert cross-encoder is not supported (rerankers: bert, xlm-roberta)"
        )
    );
}
