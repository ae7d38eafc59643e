//! What `legacy_colbert` makes of PyLate's flat keys and which folders it takes for legacy ones.

use super::*;
use serde_json::json;

/// (query_length, document_length, the expansion as (strategy, attend, length)).
type Read = (Option<usize>, Option<usize>, Option<(String, bool, usize)>);

/// `pylate_lengths` of a folder whose config_sentence_transformers.json is `config` (and
/// whose sentence_bert_config.json is `saved`, when given): (query_length,
/// document_length, expansion as (strategy, attend, length)).
fn lengths(config: Value, saved: Option<Value>) -> Result<Read, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(s) = saved {
        std::fs::write(dir.path().join("sentence_bert_config.json"), s.to_string()).expect("write");
    }
    let map = config.as_object().expect("object").clone();
    let l = pylate_lengths(dir.path(), &map).map_err(|e| e.to_string())?;
    Ok((
        l.query_length,
        l.document_length,
        l.query_expansion.map(|x| (x.strategy, x.attend, x.length)),
    ))
}

/// sentence-transformers 6.2's translation of PyLate's flat keys (its
/// `_parse_model_config`), case by case.
#[test]
fn pylate_s_flat_keys_become_the_expansion_sentence_transformers_makes() {
    let fixed = |attend, length| Some(("fixed".to_string(), attend, length));
    // query_length moves into the expansion; the query is then cut only there.
    assert_eq!(
        lengths(json!({"query_length": 32, "document_length": 180}), None),
        Ok((None, Some(180), fixed(false, 32)))
    );
    assert_eq!(
        lengths(json!({"query_prefix": "[Q] "}), None),
        Ok((None, None, fixed(false, 32))),
        "32 when no length is saved"
    );
    assert_eq!(
        lengths(json!({"query_length": 0}), None),
        Ok((None, None, fixed(false, 32))),
        "and for 0, as Python's `or` takes it"
    );
    assert_eq!(
        lengths(json!({"model_type": "ColBERT"}), None),
        Ok((None, None, None)),
        "no PyLate key, no expansion"
    );
    assert_eq!(
        lengths(
            json!({"query_length": 32, "do_query_expansion": false}),
            None
        ),
        Ok((Some(32), None, None)),
        "expansion off keeps query_length as the cut"
    );
    assert_eq!(
        lengths(
            json!({"query_length": 24, "attend_to_expansion_tokens": true}),
            None
        ),
        Ok((None, None, fixed(true, 24)))
    );
    assert_eq!(
        lengths(
            json!({"query_length": 24, "attend_to_mask_tokens": true}),
            None
        ),
        Ok((None, None, fixed(true, 24))),
        "Stanford's spelling as a fallback"
    );
    // An explicit expansion is kept as it is, and query_length with it.
    assert_eq!(
        lengths(
            json!({"query_length": 48, "query_expansion": {"strategy": "min", "attend": true, "length": 16}}),
            None
        ),
        Ok((Some(48), None, Some(("min".to_string(), true, 16))))
    );
    assert_eq!(
        lengths(json!({"query_length": 48, "query_expansion": null}), None),
        Ok((Some(48), None, None))
    );
    // sentence_bert_config.json's keys win over the top-level ones.
    assert_eq!(
        lengths(
            json!({"query_length": 32, "document_length": 180}),
            Some(json!({"max_seq_length": 299, "document_length": 120}))
        ),
        Ok((None, Some(120), fixed(false, 32)))
    );
    assert_eq!(
        lengths(json!({"document_length": -1}), None),
        Err("unusable model: config_sentence_transformers.json: document_length is -1; it must be a whole number of tokens".into())
    );
    assert_eq!(
        lengths(json!({"query_expansion": {"attend": true}}), None),
        Err("unusable model: config_sentence_transformers.json: query_expansion: missing field `strategy`".into())
    );
}

/// Which folders are PyLate's or Stanford's: `HF_ColBERT`, PyLate's `model_type`, any of
/// its keys, or a `pylate.` module; a plain sentence-transformers folder is neither.
#[test]
fn legacy_layouts_are_told_as_sentence_transformers_tells_them() {
    let kind = |st_config: Option<Value>, modules: Option<Value>, arch: &[&str]| {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(c) = st_config {
            std::fs::write(
                dir.path().join("config_sentence_transformers.json"),
                c.to_string(),
            )
            .expect("write");
        }
        if let Some(m) = modules {
            std::fs::write(dir.path().join("modules.json"), m.to_string()).expect("write");
        }
        let arch: Vec<String> = arch.iter().map(|a| a.to_string()).collect();
        match layout(dir.path(), &arch).expect("read") {
            None => "none",
            Some(Layout::PyLate(_)) => "pylate",
            Some(Layout::Stanford) => "stanford",
        }
    };
    assert_eq!(kind(None, None, &["HF_ColBERT"]), "stanford");
    // A PyLate copy of a Stanford checkpoint keeps HF_ColBERT in config.json: its modules.json
    // decides, as it does for sentence-transformers.
    let pylate_dense = json!([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Dense", "type": "pylate.models.Dense.Dense"}
    ]);
    assert_eq!(
        kind(
            Some(json!({"model_type": "ColBERT"})),
            Some(pylate_dense.clone()),
            &["HF_ColBERT"]
        ),
        "pylate"
    );
    assert_eq!(kind(None, None, &["BertModel"]), "none");
    let st_modules = json!([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Dense", "type": "sentence_transformers.models.Dense"}
    ]);
    assert_eq!(
        kind(
            Some(json!({"model_type": "ColBERT"})),
            Some(st_modules.clone()),
            &[]
        ),
        "pylate"
    );
    assert_eq!(
        kind(
            Some(json!({"query_prefix": "[unused0]"})),
            Some(st_modules.clone()),
            &[]
        ),
        "pylate",
        "an older PyLate save without model_type"
    );
    assert_eq!(kind(None, Some(pylate_dense), &[]), "pylate");
    assert_eq!(kind(Some(json!({})), Some(st_modules), &[]), "none");
    assert_eq!(
        kind(
            Some(json!({"prompts": {"query": "query: "}, "model_type": "SentenceTransformer"})),
            None,
            &["BertModel"]
        ),
        "none"
    );
}
