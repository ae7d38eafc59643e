#!/usr/bin/env python3
"""The model and the ONNX Runtime peer of the rerank benchmark (driven by bench/rerank).

    rerank_peer.py make-model --package PKG.tar.zst --out DIR
        A cross-encoder of the size of cross-encoder/ms-marco-MiniLM-L-6-v2 (6 layers, hidden
        384, 12 heads, 512 positions; that model cannot be downloaded here): the bundled
        all-MiniLM-L6-v2 package's encoder weights (f16 in the package, loaded as f32) under
        `bert.` of transformers' BertForSequenceClassification(num_labels=1), the pooler and
        the classifier drawn from torch.manual_seed(SEED) (normal, std 1/sqrt(384), the
        classifier x4 so that the logits spread over a few units). Saved as the folder
        sentence-transformers' CrossEncoder saves (config.json, model.safetensors,
        tokenizer.json with the pair template [CLS] $A [SEP] $B:1 [SEP]:1 and no truncation or
        padding of its own, tokenizer_config.json with model_max_length 512,
        config_sentence_transformers.json with the Sigmoid activation, modules.json,
        sentence_bert_config.json), checked by loading it with CrossEncoder when
        sentence-transformers is importable. Does nothing when DIR already holds it.

    rerank_peer.py export --model DIR --out DIR
        As bench/ort_peer.py exports the embedding model: transformers'
        BertForSequenceClassification in f32 with eager attention, torch.onnx.export
        (dynamo=False; inputs input_ids, attention_mask, token_type_ids with dynamic batch and
        sequence axes; output logits), onnxruntime.transformers.optimizer (bert, 12 heads,
        hidden 384) -> DIR/model.onnx, then quantize_dynamic (QInt8 weights per channel) ->
        DIR/model.int8.onnx; DIR/tokenizer.json and DIR/export.json beside them. Cached until
        the model folder or the versions change.

    rerank_peer.py run --onnx DIR [--int8] --workload W.json [--caxton C.json] --out R.json
        One measured run in this (fresh) process, on the workload examples/rerank_bench wrote:
        "batch" (the query against the same documents as one batch, repeated) and "single"
        (one pair per call, sequentially). 2 intra-op threads, 1 inter-op. Tokenization (pair
        encoding, longest-first truncation at the model's length, padding to the batch's
        longest), the run, the sigmoid and the sort are all in the timed region. Checks the
        pair token counts against the workload's, and in f32 its logits of the check pairs
        against Caxton f32's raw scores (|diff| <= 1e-3, else it fails).

    rerank_peer.py summary --caxton C1.json ... --caxton-int8 ... --ort O1.json ...
                           --ort-int8 ... [--cpu TEXT]
        The table of medians and the ratios Caxton/ORT.

`run` imports only numpy, tokenizers and onnxruntime, so its peak RSS is that of a plain ORT
process.
"""

import json
import math
import sys
import time
from pathlib import Path

from peer_common import (EXPORT, FLAG, MANY, REQUIRED, TRANSFORMER_MODULE, bert_tokenizer_config,
                         encoded, encoder_weights, export_onnx, export_stamp, head_config, heading,
                         latencies, layout, load_runs, main, open_peer, optimize_check_quantize,
                         peak_rss_mb, per_round, percentile, ratio, rss_mb, sha256_file, stamp_file,
                         traceable, unpacked, variant, with_medians, write_json)

THREADS = 2
SEED = 20
MAX_LENGTH = 512
LOGIT_TOLERANCE = 1e-3
# Bumped when make-model would build a different model.
MODEL_RECIPE = 1
SIGMOID = "torch.nn.modules.activation.Sigmoid"


PAIR_TEMPLATE = [
    {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
    {"Sequence": {"id": "A", "type_id": 0}},
    {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
    {"Sequence": {"id": "B", "type_id": 1}},
    {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
]


def cross_encoder_tokenizer(tok):
    """tokenizer.json for pairs: the BERT pair template (added when the post-processor lacks
    it), and no truncation or padding of the file's own (the length is tokenizer_config's)."""
    post = tok.get("post_processor") or {}
    if post.get("type") == "BertProcessing":
        pass  # [CLS] A [SEP] B [SEP] with type ids 0/1: already a pair template
    elif post.get("type") != "TemplateProcessing" or not post.get("pair"):
        vocab = tok["model"]["vocab"]
        tok["post_processor"] = {
            "type": "TemplateProcessing",
            "single": PAIR_TEMPLATE[:3],
            "pair": PAIR_TEMPLATE,
            "special_tokens": {
                t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")
            },
        }
        print("  tokenizer.json: added the pair template [CLS] $A [SEP] $B:1 [SEP]:1")
    else:
        types = [next(iter(p.values()))["type_id"] for p in post["pair"]]
        if types != [0, 0, 0, 1, 1]:
            raise SystemExit(f"tokenizer.json: unexpected pair template {post['pair']}")
    tok["truncation"] = None
    tok["padding"] = None
    return tok


def cmd_make_model(args):
    import torch
    import transformers

    out = Path(args.out)
    package = Path(args.package)
    stamp = {
        "package_sha256": sha256_file(package),
        "seed": SEED,
        "recipe": MODEL_RECIPE,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if stamp_file(out).exists() and (out / "model.safetensors").exists():
        if json.loads(stamp_file(out).read_text()).get("stamp") == stamp:
            print(f"  cross-encoder folder cached: {out}")
            return
    from transformers import BertForSequenceClassification

    work = unpacked(package, out)
    out.mkdir(parents=True, exist_ok=True)

    config = head_config(work, "BertForSequenceClassification", num_labels=1,
                         id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    shapes = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
              config.max_position_embeddings)
    if shapes != (6, 384, 12, 512):
        raise SystemExit(f"unexpected base model shape {shapes}, want (6, 384, 12, 512)")

    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config).eval()
    missing, unexpected = model.load_state_dict(encoder_weights(work), strict=False)
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    missing = [k for k in missing if not k.endswith("position_ids")]
    head = {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
            "classifier.bias"}
    if unexpected or set(missing) != head:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    # The head, seeded: pooler and classifier weights normal with std 1/sqrt(hidden) (the
    # classifier x4), biases small.
    g = torch.Generator().manual_seed(SEED)
    h = config.hidden_size
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(torch.randn(h, h, generator=g) / math.sqrt(h))
        model.bert.pooler.dense.bias.copy_(torch.randn(h, generator=g) * 0.02)
        model.classifier.weight.copy_(torch.randn(1, h, generator=g) * 4 / math.sqrt(h))
        model.classifier.bias.copy_(torch.randn(1, generator=g) * 0.1)
    model.save_pretrained(str(out), safe_serialization=True)

    tok = json.loads((work / "tokenizer.json").read_text())
    (out / "tokenizer.json").write_text(json.dumps(cross_encoder_tokenizer(tok), ensure_ascii=False))
    write_json(out, {
        "tokenizer_config.json": bert_tokenizer_config(
            MAX_LENGTH, model_input_names=["input_ids", "token_type_ids", "attention_mask"]),
        "config_sentence_transformers.json": {
            "activation_fn": SIGMOID, "model_type": "CrossEncoder", "prompts": {},
            "default_prompt_name": None},
        "modules.json": [TRANSFORMER_MODULE],
        "sentence_bert_config.json": {
            "transformer_task": "sequence-classification",
            "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
            "module_output_name": "scores"},
    })

    # The folder must be what CrossEncoder loads, scoring as this model does.
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(out / "tokenizer.json"))
    tk.enable_truncation(max_length=MAX_LENGTH, strategy="longest_first")
    pairs = [("what is the capital of australia?", "Canberra is the capital city of Australia."),
             ("how to make tomato sauce", "Warm olive oil in a pan and add garlic.")]
    encs = [tk.encode(q, d) for q, d in pairs]
    with torch.no_grad():
        logits = [float(model(input_ids=torch.tensor([e.ids]),
                              attention_mask=torch.tensor([e.attention_mask]),
                              token_type_ids=torch.tensor([e.type_ids])).logits[0, 0])
                  for e in encs]
    checked = "not checked (sentence-transformers is not importable)"
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        CrossEncoder = None
    if CrossEncoder is not None:
        ce = CrossEncoder(str(out), device="cpu")
        got = [float(x) for x in ce.predict(pairs)]
        want = [1 / (1 + math.exp(-x)) for x in logits]
        diff = max(abs(a - b) for a, b in zip(got, want))
        if diff > 1e-5 or ce.max_length != MAX_LENGTH:
            raise SystemExit(f"CrossEncoder loads the folder differently: scores {got} vs "
                             f"{want}, max_length {ce.max_length}")
        checked = f"CrossEncoder.predict agrees (max diff {diff:.1e}, max_length {ce.max_length})"
    import shutil

    shutil.rmtree(work)
    stamp_file(out).write_text(json.dumps({"stamp": stamp, "check_logits": logits}, indent=1))
    print(f"  made {out}: BertForSequenceClassification, 6 layers, hidden 384, 12 heads, "
          f"seed {SEED}; logits of two check pairs {logits[0]:.3f}, {logits[1]:.3f}; {checked}")


def cmd_export(args):
    import torch

    model_dir = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = ("config.json", "model.safetensors", "tokenizer.json")
    stamp = export_stamp(out, model={f: sha256_file(model_dir / f) for f in files})
    if stamp is None:
        return

    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(model_dir), attn_implementation="eager", torch_dtype=torch.float32).eval()
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "eager":
        raise SystemExit(f"BertForSequenceClassification uses {attn} attention, not eager")

    wrapped = traceable(model, lambda out, mask: out.logits)
    ids = torch.tensor([[101, 7592, 102, 2088, 102], [101, 7592, 102, 2088, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.int64)
    raw = out / "model-raw.onnx"
    t = time.perf_counter()
    with torch.no_grad():
        export_onnx(wrapped, (ids, mask, types), raw, "logits", {0: "batch"})
        # Checked on another shape than the traced one: the axes must really be dynamic.
        check_ids = torch.tensor(
            [[101, 2023, 2003, 102, 1037, 3231, 6251, 102], [101, 7592, 102, 2088, 102, 0, 0, 0],
             [101, 1996, 4937, 102, 2938, 102, 0, 0]], dtype=torch.int64)
        check_mask = (check_ids != 0).to(torch.int64)
        check_types = torch.tensor(
            [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0]],
            dtype=torch.int64)
        reference = wrapped(check_ids, check_mask, check_types).numpy()
    export_s = time.perf_counter() - t

    # Every logit counts: one per pair.
    checked = optimize_check_quantize(raw, out, (check_ids, check_mask, check_types), reference,
                                      slice(None), 1e-4)
    (out / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    max_len = json.loads((model_dir / "tokenizer_config.json").read_text())["model_max_length"]
    info = {"stamp": stamp, "export_s": export_s, **checked, "max_seq_length": int(max_len)}
    (out / "export.json").write_text(json.dumps(info, indent=1))
    print(f"  exported {out / 'model.onnx'}: {info['attention_nodes']} fused Attention nodes, "
          f"fused {info['fused_operators']}; export {export_s:.1f} s, optimize "
          f"{info['optimize_s']:.1f} s, quantize {info['quantize_s']:.1f} s, "
          f"max |ORT - torch| {info['max_abs_diff_vs_torch']:.2e}")


def cmd_run(args):
    import numpy as np
    import onnxruntime as ort

    onnx_dir = Path(args.onnx)
    w = json.loads(Path(args.workload).read_text())
    caxton = json.loads(Path(args.caxton).read_text()) if args.caxton else None
    session, tokenizer, session_s, load_s = open_peer(
        onnx_dir, args.int8, THREADS, onnx_dir / "tokenizer.json")

    def logits_of(query, docs):
        feed = encoded(tokenizer.encode_batch([(query, d) for d in docs]))
        return session.run(None, feed)[0][:, 0], feed["attention_mask"].sum(axis=1)

    def rerank(query, docs):
        """What /rerank answers: (index, sigmoid score), best first."""
        logits, _ = logits_of(query, docs)
        scores = 1 / (1 + np.exp(-logits))
        order = np.argsort(-logits, kind="stable")
        return [(int(i), float(scores[i])) for i in order]

    query, docs = w["query"], w["batch_documents"]
    rerank(query, docs)  # warm up as the Caxton side: one batch and one single pair
    rerank(query, docs[:1])
    idle_rss = rss_mb()

    t = time.perf_counter()
    batch_lat = latencies(lambda _: rerank(query, docs), range(w["batch_repeats"]))
    batch_s = time.perf_counter() - t
    single_lat = latencies(lambda d: rerank(query, [d]), w["single_documents"])
    peak_mb = peak_rss_mb()

    problems = []
    _, lengths = logits_of(query, docs)
    if [int(x) for x in lengths] != w["batch_pair_tokens"]:
        problems.append(f"pair token counts differ: ORT {lengths.tolist()}, "
                        f"workload {w['batch_pair_tokens']}")
    pairs = len(docs) * w["batch_repeats"]
    result = {
        "implementation": "onnxruntime int8" if args.int8 else "onnxruntime f32",
        "precision": "int8" if args.int8 else "f32",
        "onnxruntime": ort.__version__,
        "threads": THREADS,
        "load_ms": session_s * 1e3,
        "load_with_tokenizer_ms": load_s * 1e3,
        "batch_documents": len(docs),
        "batch_requests": w["batch_repeats"],
        "batch_pair_tokens_mean": sum(w["batch_pair_tokens"]) / len(docs),
        "batch_s": batch_s,
        "batch_pairs_per_s": pairs / batch_s,
        "batch_p50_ms": percentile(batch_lat, 0.5) * 1e3,
        "batch_p99_ms": percentile(batch_lat, 0.99) * 1e3,
        "single_n": len(single_lat),
        "single_p50_ms": percentile(single_lat, 0.5) * 1e3,
        "single_p99_ms": percentile(single_lat, 0.99) * 1e3,
        "idle_rss_mb": idle_rss,
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_mb,
    }
    # The check pairs, one at a time (and the batch's documents together: ORT pads them).
    check = []
    for c in w["check"]:
        logit = float(logits_of(c["query"], [c["document"]])[0][0])
        check.append({"query": c["query"], "document": c["document"], "logit": logit})
    result["check"] = check
    # The ranking set: each query against the batch's documents, as one request each.
    result["ranking"] = [[float(x) for x in logits_of(q, docs)[0]]
                         for q in w.get("ranking_queries", [])]
    if caxton is not None:
        theirs = [c["logit"] for c in caxton["check"]]
        diffs = [abs(a["logit"] - b) for a, b in zip(check, theirs)]
        result["check_max_abs_diff_vs_caxton_f32"] = max(diffs)
        if not args.int8 and max(diffs) > LOGIT_TOLERANCE:
            problems.append(f"logits differ from Caxton f32's raw scores by up to {max(diffs):.2e} "
                            f"(> {LOGIT_TOLERANCE}): ORT {[c['logit'] for c in check]}, "
                            f"Caxton {theirs}")
    Path(args.out).write_text(json.dumps(result, indent=1))
    r = result
    print(f"  onnxruntime {ort.__version__}{' int8' if args.int8 else ' f32'}: "
          f"batch {r['batch_pairs_per_s']:.1f} pairs/s (p50 {r['batch_p50_ms']:.1f} ms, "
          f"p99 {r['batch_p99_ms']:.1f} ms), single p50 {r['single_p50_ms']:.2f} ms "
          f"p99 {r['single_p99_ms']:.2f} ms, session {r['load_ms']:.0f} ms, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB"
          + (f", check |logit - caxton f32| <= {r['check_max_abs_diff_vs_caxton_f32']:.1e}"
             if "check_max_abs_diff_vs_caxton_f32" in r else ""))
    if problems:
        raise SystemExit("ORT rerank peer: " + "; ".join(problems))


def cmd_summary(args):
    cax, cax8, fast, ort, ort8 = map(load_runs, (
        args.caxton, args.caxton_int8, args.caxton_int8_fast, args.ort, args.ort_int8))
    keys = ("batch_pairs_per_s", "batch_p50_ms", "batch_p99_ms", "single_p50_ms",
            "single_p99_ms", "load_ms", "rss_mb", "peak_rss_mb")

    variants = with_medians((cax, cax8, fast, ort, ort8), keys)
    r0 = cax[0]
    columns = [
        (f"batch 1x{r0['batch_documents']} pairs/s", lambda m: f"{m['batch_pairs_per_s']:.1f}"),
        ("batch p50/p99 ms", lambda m: f"{m['batch_p50_ms']:.1f} / {m['batch_p99_ms']:.1f}"),
        ("single p50/p99 ms", lambda m: f"{m['single_p50_ms']:.2f} / {m['single_p99_ms']:.2f}"),
        ("load ms", lambda m: f"{m['load_ms']:.0f}"),
        ("RSS MB", lambda m: f"{m['rss_mb']:.0f}"),
        ("peak RSS MB", lambda m: f"{m['peak_rss_mb']:.0f}"),
    ]
    line = layout(34, [c[:1] for c in columns], 2)

    heading(args.cpu)
    print(f"reranker: {r0['model_id']} (BERT cross-encoder, 6 layers, hidden 384, 12 heads, "
          f"max {r0['max_seq_length']} tokens); query {r0['query_tokens']} tokens, documents "
          f"~{r0['document_tokens_mean']:.0f} tokens (pairs {r0['batch_pair_tokens_mean']:.0f})")
    print(f"medians of {len(cax)} interleaved round(s), {THREADS} threads each; batch: "
          f"{r0['batch_requests']} requests of 1 query x {r0['batch_documents']} documents; "
          f"single: {r0['single_n']} requests of one pair; onnxruntime {ort[0]['onnxruntime']}")
    print(line("", [c[0] for c in columns]))
    for label, _, m in variants:
        print(line(label, [c[1](m) for c in columns]))
    by = {label: m for label, _, m in variants}

    for c_label, o_label in ((variant(cax), variant(ort)),
                             (variant(cax8) if cax8 else None, variant(ort8) if ort8 else None),
                             (variant(fast) if fast else None, variant(ort8) if ort8 else None)):
        if not c_label or not o_label:
            continue
        c, o = by[c_label], by[o_label]
        print(line(f"ratio {c_label.split(' (')[0]} / {o_label}", [
            f"{ratio(c['batch_pairs_per_s'], o['batch_pairs_per_s']):.2f}",
            f"{ratio(c['batch_p50_ms'], o['batch_p50_ms']):.2f} / "
            f"{ratio(c['batch_p99_ms'], o['batch_p99_ms']):.2f}",
            f"{ratio(c['single_p50_ms'], o['single_p50_ms']):.2f} / "
            f"{ratio(c['single_p99_ms'], o['single_p99_ms']):.2f}",
            f"{ratio(c['load_ms'], o['load_ms']):.2f}",
            f"{ratio(c['rss_mb'], o['rss_mb']):.2f}",
            f"{ratio(c['peak_rss_mb'], o['peak_rss_mb']):.2f}",
        ]))
    per_round(variants, line, lambda r: [c[1](r) for c in columns])
    print("ratios are caxton / ORT throughout (pairs/s: > 1 means caxton is faster; latency, load")
    print("and RSS: < 1 means caxton is faster or smaller). caxton's figures include HTTP over the")
    print("Unix socket; its load is the daemon's load of the reranker (load_ms of POST")
    print("/api/memory/models/ID/load), its RSS the daemon's VmRSS after the run (the default")
    print("embedding model it loads at start unloaded before the run) and peak its VmHWM. ORT")
    print("runs in-process in a fresh Python process: load is session creation, RSS its VmRSS")
    print("after the run, peak its ru_maxrss.")
    fails = 0
    worst = max(r.get("check_max_abs_diff_vs_caxton_f32", float("nan")) for r in ort)
    print(f"check pairs: |ORT f32 logit - caxton f32 raw score| <= {worst:.2e} (bound "
          f"{LOGIT_TOLERANCE})")
    ref = [[c["logit"] for c in r["check"]] for r in ort]
    for runs in (cax8, fast, ort8):
        if not runs:
            continue
        diffs = [abs(c["logit"] - x) for r, f in zip(runs, ref) for c, x in zip(r["check"], f)]
        print(f"{variant(runs)} logits against ORT f32's: max |diff| {max(diffs):.2e}")
    # The ranking set against Caxton f32's (the same as ORT f32's, checked above): the largest
    # score error (after the sigmoid /rerank applies) and the share of each query's top 5 kept.
    reference = cax[0].get("ranking")
    worst = {}
    if reference:
        sigmoid = lambda x: 1 / (1 + math.exp(-x))
        for runs in (cax8, fast, ort, ort8):
            if not runs or not runs[0].get("ranking"):
                continue
            got = runs[0]["ranking"]
            err = max(abs(sigmoid(a) - sigmoid(b)) for q, r in zip(got, reference)
                      for a, b in zip(q, r))
            top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:5])
            agree = sum(len(top(q) & top(r)) for q, r in zip(got, reference)) / (5 * len(reference))
            worst[variant(runs)] = (err, agree)
            print(f"{variant(runs)}: {len(reference)} queries x {len(reference[0])} documents against "
                  f"caxton f32: max score error {err:.2e}, top-5 agreement {agree * 100:.1f}%")
        if fast and ort8 and variant(fast) in worst and variant(ort8) in worst:
            (fe, fa), (oe, oa) = worst[variant(fast)], worst[variant(ort8)]
            no_worse = fe <= oe and fa >= oa
            print(f"caxton int8-fast against ORT int8: score error {fe:.2e} vs {oe:.2e}, top-5 "
                  f"{fa * 100:.1f}% vs {oa * 100:.1f}%: {'no worse' if no_worse else 'WORSE'}")
    for r in cax + cax8 + fast:
        if r.get("batch_vs_single_max_abs_diff", 0) > LOGIT_TOLERANCE:
            fails += 1
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main({
        "make-model": (cmd_make_model, {
            "--package": {"default": "bundled-models/all-MiniLM-L6-v2.tar.zst"}, "--out": REQUIRED}),
        "export": (cmd_export, EXPORT),
        "run": (cmd_run, {"--onnx": REQUIRED, "--int8": FLAG, "--workload": REQUIRED,
                          "--caxton": {}, "--out": REQUIRED}),
        "summary": (cmd_summary, {
            "--caxton": {"nargs": "+", "required": True}, "--caxton-int8": MANY,
            "--caxton-int8-fast": MANY, "--ort": {"nargs": "+", "required": True},
            "--ort-int8": MANY, "--cpu": {"default": ""}}),
    }, __doc__.splitlines()[0]))
