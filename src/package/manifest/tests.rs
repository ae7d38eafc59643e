//! The manifest's rules, each refusal with its exact message.

use super::*;

const HASH: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

fn good() -> String {
    format!(
        "format: 1\nid: all-MiniLM-L6-v2\nversion: \"1\"\narchitecture: bert\ndimensions: 384\n\
         max_seq_length: 256\npooling: mean\nnormalize: true\nfiles:\n\
         - {{path: model.safetensors, size: 10, sha256: \"{HASH}\"}}\n\
         - {{path: tokenizer.json, size: 10, sha256: \"{HASH}\"}}\n\
         - {{path: config.json, size: 10, sha256: \"{HASH}\"}}\n"
    )
}

fn err_of(yaml: &str) -> String {
    Manifest::parse(yaml.as_bytes()).unwrap_err().to_string()
}

#[test]
fn parses_the_contract_example() {
    let m = Manifest::parse(good().as_bytes()).unwrap();
    assert_eq!(m.id, "all-MiniLM-L6-v2");
    assert_eq!(m.pooling, Pooling::Mean);
    assert_eq!(m.declared_bytes(), 30);
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
}

#[test]
fn refuses_unknown_keys() {
    let e = err_of(&good().replace("normalize: true", "normalize: true\nextra: 1"));
    assert!(e.contains("unknown field `extra`"), "{e}");
}

#[test]
fn refuses_unsupported_architecture_and_pooling() {
    let e = err_of(&good().replace("architecture: bert", "architecture: gpt2"));
    assert!(
        e.contains(
            "unknown variant `gpt2`, expected one of `bert`, `distilbert`, `xlm-roberta`, `mpnet`"
        ),
        "{e}"
    );
    let e = err_of(&good().replace("pooling: mean", "pooling: weightedmean"));
    assert!(e.contains("unknown variant `weightedmean`"), "{e}");
}

#[test]
fn prompts_need_sane_names_and_an_existing_default() {
    let with = |extra: &str| good().replace("files:", &format!("{extra}files:"));
    let m =
        Manifest::parse(with("prompts:\n  query: 'query: '\ndefault_prompt: query\n").as_bytes())
            .expect("valid");
    assert_eq!(m.prompts["query"], "query: ");
    assert_eq!(
        err_of(&with(
            "prompts:\n  query: 'query: '\ndefault_prompt: passage\n"
        )),
        "default_prompt: \"passage\" is not one of the manifest's prompts"
    );
    assert_eq!(
        err_of(&with("prompts:\n  'a b': 'x'\n")),
        "prompts: prompt name \"a b\" is not 1 to 64 of [A-Za-z0-9._-]"
    );
}

#[test]
fn a_decoder_reranker_has_its_pair_template_and_reads_the_last_token() {
    let template =
        "pair_template:\n  prefix: '<s>'\n  pair: 'Q: {query} D: {document}'\n  suffix: '</s>'\n";
    let reranker = |pooling: &str, extra: &str| {
        good()
            .replace(
                "pooling: mean\nnormalize: true",
                &format!("pooling: {pooling}\nnormalize: false"),
            )
            .replace(
                "files:",
                &format!("kind: reranker\nlabels: 1\nactivation: sigmoid\n{extra}files:"),
            )
    };
    let m = Manifest::parse(reranker("last_token", template).as_bytes()).expect("valid");
    let t = m.pair_template.clone().expect("template");
    assert_eq!((t.prefix.as_str(), t.suffix.as_str()), ("<s>", "</s>"));
    assert_eq!(t.render(None, "q", "d"), "Q: q D: d");
    assert!(!t.takes_instruction());
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
    let qwen3 = crate::package::PairTemplate::qwen3_reranker();
    let with_qwen3 = Manifest {
        pair_template: Some(qwen3.clone()),
        ..m
    };
    assert_eq!(
        Manifest::parse(with_qwen3.to_yaml().as_bytes())
            .unwrap()
            .pair_template,
        Some(qwen3),
        "its quotes and newlines survive YAML"
    );

    assert_eq!(
        err_of(&reranker("cls", template)),
        "pooling: a reranker with a pair_template reads its last token: pooling must be last_token"
    );
    assert_eq!(
        err_of(&reranker(
            "last_token",
            "pair_template:\n  prefix: ''\n  pair: '{query}'\n  suffix: ''\n"
        )),
        "pair_template.pair: must hold {document} once (it holds it 0 times)"
    );
    assert_eq!(
        err_of(&good().replace("files:", &format!("{template}files:"))),
        "pair_template: only a reranker (kind: reranker) has it; remove it or set kind: reranker"
    );
}

#[test]
fn a_reranker_says_its_labels_and_activation_and_reads_the_first_token() {
    let reranker = |extra: &str| {
        good()
            .replace(
                "pooling: mean\nnormalize: true",
                "pooling: cls\nnormalize: false",
            )
            .replace("files:", &format!("{extra}files:"))
    };
    let m =
        Manifest::parse(reranker("kind: reranker\nlabels: 1\nactivation: sigmoid\n").as_bytes())
            .expect("valid");
    assert_eq!(m.kind, ModelKind::Reranker);
    assert_eq!(m.labels, Some(1));
    assert_eq!(m.activation, Some(ScoreActivation::Sigmoid));
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
    // An embedding manifest is written as before: no kind, labels or activation.
    let e = Manifest::parse(good().as_bytes()).unwrap();
    assert_eq!(e.kind, ModelKind::Embedding);
    assert!(!e.to_yaml().contains("kind"), "{}", e.to_yaml());

    assert_eq!(
        err_of(&reranker("kind: reranker\nactivation: sigmoid\n")),
        "labels: a reranker must say how many labels its head has"
    );
    assert_eq!(
        err_of(&reranker(
            "kind: reranker\nlabels: 3\nactivation: sigmoid\n"
        )),
        "labels: 3 labels make a classifier; only one-label cross-encoders (rerankers) are served"
    );
    assert_eq!(
        err_of(&reranker("kind: reranker\nlabels: 1\n")),
        "activation: a reranker must say what its scores apply to the logits (sigmoid, identity or tanh)"
    );
    assert!(
        err_of(&reranker("kind: reranker\nlabels: 1\nactivation: relu\n"))
            .contains("unknown variant `relu`, expected one of `sigmoid`, `identity`, `tanh`")
    );
    assert_eq!(
        err_of(&good().replace(
            "files:",
            "kind: reranker\nlabels: 1\nactivation: sigmoid\nfiles:"
        )),
        "pooling: a cross-encoder's head reads the first token: pooling must be cls (last_token goes with a pair_template)"
    );
    assert_eq!(
        err_of(&good().replace("files:", "labels: 1\nfiles:")),
        "labels: only a reranker (kind: reranker) has it; remove it or set kind: reranker"
    );
    assert!(
        err_of(&good().replace("files:", "kind: classifier\nfiles:")).contains(
            "unknown variant `classifier`, expected one of `embedding`, `reranker`, `sparse`"
        )
    );
}

#[test]
fn score_activations_match_their_definitions() {
    let mut x = [0.0, 2.0, -1.0];
    ScoreActivation::Sigmoid.apply(&mut x);
    assert_eq!(
        x,
        [0.5, 1.0 / (1.0 + (-2f32).exp()), 1.0 / (1.0 + 1f32.exp())]
    );
    let mut x = [0.5];
    ScoreActivation::Tanh.apply(&mut x);
    assert_eq!(x, [0.5f32.tanh()]);
    let mut x = [3.0];
    ScoreActivation::Identity.apply(&mut x);
    assert_eq!(x, [3.0]);
}

#[test]
fn refuses_bad_ids_versions_and_hashes() {
    assert_eq!(
        err_of(&good().replace("id: all-MiniLM-L6-v2", "id: \"a/b\"")),
        "id: \"a/b\" is not 1 to 128 of [A-Za-z0-9._-]"
    );
    assert!(err_of(&good().replace("version: \"1\"", "version: \"\"")).starts_with("version:"));
    assert_eq!(
        err_of(&good().replacen(HASH, "ABC", 1)),
        "files[0].sha256: must be 64 lower-case hex digits"
    );
    assert_eq!(
        err_of(&good().replace("format: 1", "format: 2")),
        "format: format 2 is not supported (this build reads format 1)"
    );
}

#[test]
fn refuses_unsafe_or_duplicate_paths() {
    assert_eq!(
        err_of(&good().replace("path: config.json", "path: ../config.json")),
        "files[2].path: the path contains `..`"
    );
    assert_eq!(
        err_of(&good().replace("path: config.json", "path: /etc/passwd")),
        "files[2].path: the path is absolute"
    );
    assert_eq!(
        err_of(&good().replace("path: config.json", "path: tokenizer.json")),
        "files[2].path: \"tokenizer.json\" is listed twice"
    );
    assert_eq!(
        err_of(&good().replace("path: config.json", "path: other.json")),
        "files: config.json is required but not listed"
    );
}

#[test]
fn entry_paths() {
    assert!(check_entry_path("1_Pooling/config.json").is_ok());
    assert!(check_entry_path("a//b").is_err());
    assert!(check_entry_path("./a").is_err());
    assert!(check_entry_path("a\\b").is_err());
    assert!(check_entry_path("").is_err());
}

#[test]
fn version_ordering() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions("2", "10"), Less);
    assert_eq!(compare_versions("1.9", "1.10"), Less);
    assert_eq!(compare_versions("1.2", "1.2.1"), Less);
    assert_eq!(compare_versions("1.0-rc1", "1.0.1"), Less);
    assert_eq!(compare_versions("1.0", "1.0"), Equal);
    assert_eq!(compare_versions("b", "a"), Greater);
}

#[test]
fn dense_modules_chain_to_the_dimensions_and_widths_fit() {
    let with = |extra: &str, dims: usize| {
        good()
            .replace("dimensions: 384", &format!("dimensions: {dims}"))
            .replace("files:", &format!("{extra}files:"))
            + &format!("- {{path: 2_Dense/model.safetensors, size: 10, sha256: \"{HASH}\"}}\n")
    };
    let dense = "dense:\n  - {path: 2_Dense/model.safetensors, inputs: 384, outputs: 256, bias: true, activation: tanh}\n";
    let m = Manifest::parse(with(dense, 256).as_bytes()).expect("valid");
    assert_eq!((m.hidden_size(), m.dimensions), (384, 256));
    assert_eq!(
        err_of(&with(dense, 384)),
        "dimensions: 384 differs from the last Dense module's 256 outputs"
    );
    assert_eq!(
        err_of(&with(&dense.replace("2_Dense", "3_Dense"), 256)),
        "dense[0].path: \"3_Dense/model.safetensors\" is not one of the listed files"
    );
    let two = format!(
        "{dense}  - {{path: 2_Dense/model.safetensors, inputs: 128, outputs: 64, bias: false, activation: identity}}\n"
    );
    assert_eq!(
        err_of(&with(&two, 64)),
        "dense[1].inputs: 128 does not take dense[0]'s 256 outputs"
    );
    assert_eq!(
        err_of(&with("matryoshka:\n  dimensions: [256, 512]\n", 384)),
        "matryoshka.dimensions: 512 is not between 1 and the model's 384"
    );
}

#[test]
fn a_request_s_width_and_prompt_follow_the_manifest() {
    let plain = Manifest::parse(good().as_bytes()).expect("valid");
    assert_eq!(plain.check_width(1), Ok(1));
    assert_eq!(
        plain.check_width(385).map_err(|e| e.to_string()),
        Err("dimensions must be between 1 and 384 for model all-MiniLM-L6-v2, got 385".into())
    );
    let trained = Manifest::parse(
        good()
            .replace(
                "files:",
                "matryoshka:\n  dimensions: [256, 128]\nprompts:\n  search_query: 'q: '\n  passage: 'p: '\ndefault_prompt: search_query\nfiles:",
            )
            .as_bytes(),
    )
    .expect("valid");
    assert_eq!(trained.check_width(128), Ok(128));
    // Its full width is always one it gives.
    assert_eq!(trained.check_width(384), Ok(384));
    assert_eq!(
        trained.check_width(200).map_err(|e| e.to_string()),
        Err(
            "model all-MiniLM-L6-v2 was trained for 256, 128 dimensions; 200 is not one of them"
                .into()
        )
    );
    assert_eq!(trained.prompt_for(None, None), Ok(Some("q: ")));
    assert_eq!(
        trained.prompt_for(None, Some(InputType::Query)),
        Ok(Some("q: "))
    );
    assert_eq!(
        trained.prompt_for(None, Some(InputType::Document)),
        Ok(Some("p: "))
    );
    assert_eq!(plain.prompt_for(None, Some(InputType::Document)), Ok(None));
    assert_eq!(
        trained
            .prompt_for(Some("x"), None)
            .map_err(|e| e.to_string()),
        Err(
            "model all-MiniLM-L6-v2 has no prompt \"x\"; its prompts: passage, search_query".into()
        )
    );
}

/// A sparse model's manifest: `kind: sparse`, term pooling and its activation, no unit vectors.
fn sparse() -> String {
    good()
        .replace("dimensions: 384", "dimensions: 30522")
        .replace(
            "pooling: mean\nnormalize: true",
            "pooling: max\nnormalize: false\nkind: sparse\nsparse_activation: relu",
        )
}

#[test]
fn a_sparse_manifest_pools_terms_and_makes_no_unit_vectors() {
    let m = Manifest::parse(sparse().as_bytes()).unwrap();
    assert_eq!(m.kind, ModelKind::Sparse);
    assert_eq!(m.sparse_activation, Some(SparseActivation::Relu));
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
    let cases = [
        (
            sparse().replace("pooling: max", "pooling: mean"),
            "pooling: a sparse model pools its term weights with max or sum, not mean",
        ),
        (
            sparse().replace("sparse_activation: relu\n", ""),
            "sparse_activation: a sparse model must say what it applies to its logits (relu or log1p_relu)",
        ),
        (
            sparse().replace("normalize: false", "normalize: true"),
            "normalize: a sparse model makes term weights, not a dense vector: remove it",
        ),
        (
            good().replace("pooling: mean", "pooling: sum"),
            "pooling: sum pools a sparse model's term weights; an embedding model pools with mean, cls or last_token (or set kind: sparse)",
        ),
        (
            good().replace(
                "normalize: true",
                "normalize: true\nsparse_activation: relu",
            ),
            "sparse_activation: only a sparse model (kind: sparse) has it; remove it or set kind: sparse",
        ),
    ];
    for (yaml, message) in cases {
        assert_eq!(err_of(&yaml), message);
    }
}

/// A multi-vector (ColBERT) manifest: every token's vector, its late-interaction rules.
fn multi_vector() -> String {
    good().replace(
        "pooling: mean\nnormalize: true",
        "pooling: tokens\nnormalize: true\nkind: multi_vector\nlate_interaction:\n  query_length: 32\n  document_length: 180\n  query_expansion: {token_id: 103, length: 32, attend: false}\n  skiplist: [999, 1000]\n  similarity: maxsim",
    )
}

#[test]
fn a_multi_vector_manifest_keeps_every_token_and_says_how_sides_are_cut() {
    let m = Manifest::parse(multi_vector().as_bytes()).unwrap();
    assert_eq!(
        (m.kind, m.pooling),
        (ModelKind::MultiVector, Pooling::Tokens)
    );
    let li = m.late_interaction.clone().expect("late_interaction");
    assert_eq!((li.query_length, li.document_length), (32, 180));
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
    let cases = [
        (
            multi_vector().replace("pooling: tokens", "pooling: mean"),
            "pooling: a multi-vector model keeps every token's vector: pooling must be tokens, not mean",
        ),
        (
            good().replace("pooling: mean", "pooling: tokens"),
            "pooling: tokens keeps every token's vector, which only a multi-vector model (kind: multi_vector) serves",
        ),
        (
            multi_vector().replace("document_length: 180", "document_length: 513"),
            "late_interaction.document_length: 513 is not between 2 and max_seq_length (256)",
        ),
        (
            multi_vector().replace("length: 32, attend", "length: 33, attend"),
            "late_interaction.query_expansion.length: 33 is not between 1 and query_length (32)",
        ),
        (
            multi_vector().replace("kind: multi_vector\n", ""),
            "pooling: tokens keeps every token's vector, which only a multi-vector model (kind: multi_vector) serves",
        ),
        (
            multi_vector()
                .replace("pooling: tokens", "pooling: mean")
                .replace("kind: multi_vector\n", ""),
            "late_interaction: only a multi-vector model (kind: multi_vector) has it; remove it or set kind: multi_vector",
        ),
    ];
    for (yaml, message) in cases {
        assert_eq!(err_of(&yaml), message);
    }
}

/// bge-m3's manifest: an embedding model with term weights and token vectors beside its
/// vector, and the rules of its token vectors.
fn bge_m3() -> String {
    good().replace(
        "files:\n",
        "late_interaction:\n  query_length: 256\n  document_length: 256\n  similarity: meanmaxsim\n  drop_first: true\noutputs: [dense, sparse, multi_vector]\noutput_heads:\n  sparse:\n    linear: {path: s.safetensors, inputs: 384, outputs: 1, bias: true, activation: identity}\n    skip: [0, 1, 2, 3]\n    vocabulary: 250002\n  multi_vector: {path: c.safetensors, inputs: 384, outputs: 384, bias: true, activation: identity}\nfiles:\n",
    ) + &format!(
        "- {{path: s.safetensors, size: 1, sha256: \"{HASH}\"}}\n- {{path: c.safetensors, size: 1, sha256: \"{HASH}\"}}\n"
    )
}

#[test]
fn an_embedding_model_s_outputs_take_its_token_vectors_and_name_listed_files() {
    let m = Manifest::parse(bge_m3().as_bytes()).unwrap();
    assert!(m.serves(ModelKind::Embedding));
    assert!(m.serves(ModelKind::Sparse) && m.serves(ModelKind::MultiVector));
    assert!(!m.serves(ModelKind::Reranker));
    assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).unwrap(), m);
    let cases = [
        (
            bge_m3().replace("inputs: 384, outputs: 1,", "inputs: 383, outputs: 1,"),
            "output_heads.sparse.linear.inputs: 383 is not the encoder's width 384",
        ),
        (
            bge_m3().replace("inputs: 384, outputs: 1,", "inputs: 384, outputs: 2,"),
            "output_heads.sparse.linear.outputs: 2: a token's weight is one number",
        ),
        (
            bge_m3().replace(
                "multi_vector: {path: c.safetensors",
                "multi_vector: {path: d.safetensors",
            ),
            "output_heads.multi_vector.path: \"d.safetensors\" is not one of the listed files",
        ),
        (
            bge_m3().replace(
                "late_interaction:\n  query_length: 256\n  document_length: 256\n  similarity: meanmaxsim\n  drop_first: true\n",
                "",
            ),
            "late_interaction: an embedding model has it exactly when its outputs list multi_vector",
        ),
        (
            bge_m3().replace("[dense, sparse, multi_vector]", "[dense, multi_vector]"),
            "output_heads.sparse: a model has it exactly when outputs lists sparse",
        ),
        (
            bge_m3().replace("[dense, sparse, multi_vector]", "[sparse, multi_vector]"),
            "outputs: an embedding model's own vector is one of its outputs: list dense",
        ),
        (
            bge_m3().replace("[dense, sparse, multi_vector]", "[dense, sparse, sparse, multi_vector]"),
            "outputs: sparse is listed twice",
        ),
    ];
    for (yaml, message) in cases {
        assert_eq!(err_of(&yaml), message);
    }
}
