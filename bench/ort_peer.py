#!/usr/bin/env python3
"""The ONNX Runtime peer of the Caxton benchmark (driven by bench/compare).

    ort_peer.py export  --package PKG.tar.zst --out DIR
        Unpacks the package into DIR/package, loads config.json + model.safetensors (f16 in
        the package) into transformers' BertModel in float32 with eager attention, exports it
        with torch's legacy exporter (dynamo=False; dynamic batch and sequence axes), fuses it
        with onnxruntime.transformers.optimizer (bert, 12 heads, hidden 384) and writes
        DIR/model.onnx, then DIR/model.int8.onnx: the same graph after
        onnxruntime.quantization.quantize_dynamic (QInt8 weights per channel, activations
        quantized per tensor at run time), plus DIR/export.json (what was fused, versions,
        the package's sha256). A second call with the same package and versions does nothing.

    ort_peer.py run --model DIR [--int8] [--threads N] --texts TEXTS.json --caxton CAXTON.json
                    --json OUT.json
        One measured run in this (fresh) process: the workloads of examples/bench.rs on the
        texts it wrote (same texts, order and batch sizes), --threads intra-op threads (2 by
        default; bench/compare pins the process to as many cores), on model.onnx
        (or model.int8.onnx). Tokenization, the run, mean pooling and L2 normalisation are all
        inside the timed region. Checks its token counts against Caxton's usage and, in f32,
        its vectors against Caxton f32's (cosine >= 0.999); records its vectors of the check
        texts either way.

    ort_peer.py tokens --model DIR [--int8] --threads N --tokens TOKENS.json --json OUT.json
        `run`'s workloads on token ids instead of texts, for a machine with numpy and
        onnxruntime only: TOKENS.json (examples/bench --tokens) holds each text's ids in
        request order ("short", "long", "single"; single sentences, pad id 0), the batch sizes
        ("short_batch", "long_batch") and "check" (ids and Caxton f32's vector of a few texts).
        The warm-up request is the first single text. Building the padded inputs, the run,
        mean pooling and L2 normalisation are inside the timed region; the token counts are
        the real ids'. Writes `run`'s figures and check_min_cosine (each check text run alone
        against Caxton f32's vector), which in f32 must be >= 0.999.

    ort_peer.py summary --caxton A1.json ... [--caxton-int8 ...] [--caxton-bf16 ...]
                        --ort B1.json ... [--ort-int8 ...]
        Prints the table of medians and ratios, with each Caxton variant's engine run
        in-process on the same texts (examples/bench measures it before starting the daemon)
        and what the daemon's request path costs beside it. Fails if Caxton int8's (or bf16's) vectors of
        the check texts stray below cosine 0.999 of the f32 reference: ORT f32's vectors, from
        transformers' BertModel with mean pooling and L2 normalisation, the computation
        sentence-transformers does for this model (tests/fidelity.rs checks Caxton against
        sentence-transformers' own vectors).

Only `export` imports torch and transformers; `run` imports numpy, tokenizers and onnxruntime,
so its peak RSS is that of a plain ORT embedding process; `tokens` numpy and onnxruntime only.
"""

import json
import statistics
import sys
import time
from pathlib import Path

from peer_common import (FLAG, MANY, REQUIRED, bert_model, cosine, encoded, export_onnx,
                         export_stamp, heading, layout, load_runs, main, measure_workloads, median,
                         open_peer, open_session, optimize_check_quantize, padded, per_round,
                         print_figures, ratio, read_manifest, sha256_file, top_k_agreement,
                         traceable, unpack, variant, with_medians)

COSINE_MIN = 0.999
# The least cosine each Caxton precision's vectors keep to the f32 ones on the check texts.
FLOOR = {"int8-fast": 0.997}
# The documented floors against sentence-transformers on the reference texts (README).
REFERENCE_FLOOR = {"f32": 0.9999, "int8": 0.999, "int8-fast": 0.997}
# Share of f32's top-10 neighbours a reduced precision must keep (the ranking check): issue
# 31's 98% on the full corpus (100 queries among 1,000 texts). CI's --short corpus (32 queries
# among 320) is too small to hold that line: one query whose 10th and 11th neighbours swap
# moves it by 0.3%, and int8-fast measured 97.5% there against 98.7% on the full corpus; it
# holds 95%, which a broken kernel misses by far (ORT int8: 88%).
RANKING_MIN = 0.98
RANKING_MIN_SMALL = 0.95
RANKING_FULL_QUERIES = 100


def cmd_export(args):
    import torch

    out = Path(args.out)
    package = Path(args.package)
    stamp = export_stamp(out, package_sha256=sha256_file(package))
    if stamp is None:
        return
    pkg = out / "package"
    unpack(package, pkg)
    manifest = read_manifest(pkg / "manifest.yaml")
    if manifest.get("architecture") != "bert":
        raise SystemExit(f"the ORT peer exports bert only, not {manifest.get('architecture')}")

    model = bert_model(pkg)
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "eager":
        raise SystemExit(f"BertModel uses {attn} attention, not eager")

    wrapped = traceable(model, lambda out, mask: out.last_hidden_state)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    raw = out / "model-raw.onnx"
    t = time.perf_counter()
    with torch.no_grad():
        export_onnx(wrapped, (ids, mask, types), raw, "last_hidden_state",
                    {0: "batch", 1: "sequence"})
        # Checked on another shape than the traced one: the axes must really be dynamic.
        check_ids = torch.tensor(
            [[101, 2023, 2003, 1037, 3231, 6251, 102], [101, 7592, 102, 0, 0, 0, 0],
             [101, 1996, 4937, 2938, 102, 0, 0]], dtype=torch.int64)
        check_mask = (check_ids != 0).to(torch.int64)
        check_types = torch.zeros_like(check_ids)
        reference = wrapped(check_ids, check_mask, check_types).numpy()
    export_s = time.perf_counter() - t

    # The fused graph must compute what torch computes (on real tokens; padding rows are free).
    info = {
        "stamp": stamp,
        "export_s": export_s,
        **optimize_check_quantize(raw, out, (check_ids, check_mask, check_types), reference,
                                  check_mask.numpy().astype(bool), 1e-3),
        "max_seq_length": int(manifest["max_seq_length"]),
    }
    (out / "export.json").write_text(json.dumps(info, indent=1))
    print(
        f"  exported {out / 'model.onnx'}: {info['attention_nodes']} fused Attention nodes, "
        f"fused {info['fused_operators']}; export {export_s:.1f} s, optimize "
        f"{info['optimize_s']:.1f} s, max |ORT - torch| {info['max_abs_diff_vs_torch']:.2e}"
    )


def mean_pooled(session, feed):
    """The session's vectors of one padded batch, mean-pooled over the mask and L2-normalised,
    and its real (non-padding) token count, as Caxton's usage.prompt_tokens."""
    import numpy as np

    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"]
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12), int(mask.sum())


def ran(args, load_s, session_s):
    """The result fields that say what ran."""
    import onnxruntime as ort

    return {
        "implementation": "onnxruntime int8" if args.int8 else "onnxruntime",
        "precision": "int8" if args.int8 else "f32",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "load_ms": load_s * 1e3,
        "session_ms": session_s * 1e3,
    }


def check(result, problems, args, embed, checks, item, record=None):
    """Embeds each of `checks` alone (item(c): the text or the ids) and records the least
    cosine with Caxton f32's vector: in f32 the outputs must be identical (a problem below
    COSINE_MIN), else the comparison means nothing; in int8 it is what ORT's quantization
    costs. record(c, vector), when given, makes result's "check" of our vectors."""
    ours = [embed([item(c)])[0][0] for c in checks]
    if record:
        result["check"] = [record(c, v) for c, v in zip(checks, ours)]
    cosines = [cosine(v, c["embedding"]) for v, c in zip(ours, checks)]
    result["check_min_cosine"] = min(cosines)
    if min(cosines) < COSINE_MIN and not args.int8:
        problems.append(f"vectors differ from Caxton's: cosines {cosines}")


def report(args, result, workload, load_label, problems, given=""):
    """Writes the result, prints its figures, fails on the problems."""
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"onnxruntime {result['onnxruntime']} peer: {args.threads} intra-op threads, fused graph"
          f"{' after quantize_dynamic (int8)' if args.int8 else ''}, in-process{given}")
    print_figures(result, workload["short_batch"], workload["long_batch"], load_label)
    if problems:
        raise SystemExit("ORT peer: " + "; ".join(problems))


def cmd_run(args):
    import numpy as np

    model_dir = Path(args.model)
    workload = json.loads(Path(args.texts).read_text())
    caxton = json.loads(Path(args.caxton).read_text()) if args.caxton else None
    session, tokenizer, session_s, load_s = open_peer(
        model_dir, args.int8, args.threads, model_dir / "package" / "tokenizer.json")

    def embed(texts):
        return mean_pooled(session, encoded(tokenizer.encode_batch(texts)))

    measured = measure_workloads(embed, workload)
    short, sb = workload["short"], workload["short_batch"]
    # Each reference text alone, for the fidelity check against sentence-transformers.
    reference = []
    if args.reference:
        for text in json.loads(Path(args.reference).read_text())["texts"]:
            reference.append([float(x) for x in embed([text])[0][0].astype(np.float32)])
    # Every short text's vector, in order, for the ranking check (outside the timings).
    corpus = [
        [float(x) for x in v]
        for i in range(0, len(short), sb)
        for v in embed(short[i : i + sb])[0].astype(np.float32)
    ]
    result = {**ran(args, load_s, session_s), **measured, "corpus": corpus, "reference": reference}

    problems = []
    if caxton is not None:
        check(result, problems, args, embed, caxton["check"], lambda c: c["text"],
              lambda c, v: {"text": c["text"], "embedding": [float(x) for x in v]})
        for key in ("short_tokens", "long_tokens"):
            if caxton.get(key) != result[key]:
                problems.append(f"{key}: ORT {result[key]}, Caxton {caxton.get(key)}")
    report(args, result, workload, "session + tokenizer load", problems)


def cmd_tokens(args):
    tokens = json.loads(Path(args.tokens).read_text())
    session, session_s = open_session(args.model, args.int8, args.threads)

    def embed(rows):
        return mean_pooled(session, padded(rows))

    measured = measure_workloads(embed, tokens, warm_up=tokens["single"][0])
    result = {**ran(args, session_s, session_s), **measured}
    problems = []
    check(result, problems, args, embed, tokens["check"], lambda c: c["ids"])
    report(args, result, tokens, "session load", problems, ", on given token ids")


def cmd_summary(args):
    cax, bf16, int8, fast, ort, ort8 = map(load_runs, (
        args.caxton, args.caxton_bf16, args.caxton_int8, args.caxton_int8_fast, args.ort,
        args.ort_int8))
    export = json.loads(Path(args.export).read_text()) if args.export else {}
    keys = ("short_texts_per_s", "short_tokens_per_s", "long_tokens_per_s", "single_p50_ms",
            "single_p99_ms", "peak_rss_mb", "load_ms", "concurrent_texts_per_s")
    for runs in (bf16, int8, fast, ort, ort8):
        if runs and len(runs) != len(cax):
            raise SystemExit(f"{len(cax)} caxton f32 runs, but another variant has {len(runs)}")

    def ratios(c, o):
        return [
            f"{ratio(c['short_texts_per_s'], o['short_texts_per_s']):.2f}",
            f"{ratio(c['long_tokens_per_s'], o['long_tokens_per_s']):.2f}",
            f"{ratio(o['single_p50_ms'], c['single_p50_ms']):.2f} / "
            f"{ratio(o['single_p99_ms'], c['single_p99_ms']):.2f}",
            f"{ratio(o['peak_rss_mb'], c['peak_rss_mb']):.2f}",
            f"{ratio(o['load_ms'], c['load_ms']):.2f}",
        ]

    # Each Caxton variant's engine in-process on the same texts (no socket, HTTP or JSON), as
    # a variant of its own: what the daemon's figures are measured against.
    def engine(runs):
        nan = float("nan")
        return [{
            "implementation": f"{variant(runs)} in-process",
            "short_texts_per_s": r.get("engine_short_texts_per_s", nan),
            "short_tokens_per_s":
                r.get("engine_short_texts_per_s", nan) * r["short_tokens"] / r["short_texts"],
            "long_tokens_per_s": r.get("engine_long_tokens_per_s", nan),
            "single_p50_ms": r.get("engine_single_p50_ms", nan),
            "single_p99_ms": r.get("engine_single_p99_ms", nan),
            "peak_rss_mb": nan,
            "load_ms": r.get("load_ms", nan),
        } for r in runs]

    engines = {id(runs): engine(runs) for runs in (cax, int8, fast, bf16)
               if runs and runs[0].get("engine_short_texts_per_s")}
    # Each variant's medians, named by what it really ran (bf16 runs f32 on a CPU without
    # AMX) and, for Caxton, the kernel.
    variants = with_medians((cax, int8, fast, bf16, ort, ort8), keys)
    variants += with_medians([engines[id(runs)] for runs in (cax, int8, fast, bf16)
                              if id(runs) in engines], keys)
    by = {id(runs): med for _, runs, med in variants}

    # (heading, unit, cell of a figures row)
    columns = [
        (f"{cax[0]['short_texts']:,} short, batch {cax[0]['short_batch']}",
         "texts/s (tokens/s)",
         lambda r: f"{r['short_texts_per_s']:.1f} ({r['short_tokens_per_s']:.0f})"),
        (f"{cax[0]['long_texts']} x 256 tok, b{cax[0]['long_batch']}", "tokens/s",
         lambda r: f"{r['long_tokens_per_s']:.0f}"),
        ("single p50 / p99", "ms",
         lambda r: f"{r['single_p50_ms']:.2f} / {r['single_p99_ms']:.2f}"),
        ("peak RSS", "MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
        ("load", "ms", lambda r: f"{r['load_ms']:.0f}"),
    ]
    line = layout(48, [col[:2] for col in columns], 3)

    heading(args.cpu)
    print(f"medians of {len(cax)} interleaved round(s), {cax[0].get('threads', '?')} compute "
          f"threads for Caxton, {ort[0].get('threads', '?')} intra-op threads for ORT; "
          f"onnxruntime {ort[0].get('onnxruntime')}, fused graph with "
          f"{export.get('attention_nodes', '?')} Attention nodes")
    print(line("", [col[0] for col in columns]))
    print(line("", [col[1] for col in columns]))
    for label, _, med in variants:
        print(line(label, [col[2](med) for col in columns]))
    # Caxton f32 against ORT f32; Caxton int8 and int8-fast against ORT int8 and ORT f32; bf16
    # against ORT f32.
    pairs = [(cax, ort), (int8, ort8), (fast, ort8), (int8, ort), (fast, ort), (bf16, ort),
             (engines.get(id(cax)), ort), (engines.get(id(fast)), ort8)]
    for a, b in pairs:
        if a and b:
            print(line(f"ratio {variant(a)} / {variant(b)}", ratios(by[id(a)], by[id(b)])))
    per_round(variants, line, lambda r: [col[2](r) for col in columns])
    # The daemon against its own engine: what the request path (socket, HTTP, JSON, the
    # tokenizer's hand-off, the queue) costs, and where the daemon's CPU went.
    for runs in (cax, int8, fast, bf16):
        if not runs or id(runs) not in engines:
            continue
        d, e = by[id(runs)], median(engines[id(runs)], "single_p50_ms")
        short_ratio = median([{"x": ratio(r["short_texts_per_s"], r["engine_short_texts_per_s"])}
                              for r in runs], "x")
        long_ratio = median([{"x": ratio(r["long_tokens_per_s"], r["engine_long_tokens_per_s"])}
                             for r in runs], "x")
        serving = median([{"x": r["short_cpu"]["serving_ms"] / r["short_requests"]}
                          for r in runs if r.get("short_cpu")], "x")
        print(f"{variant(runs)}: daemon / in-process engine {short_ratio:.2f} (short), "
              f"{long_ratio:.2f} (long; goal >= 0.9); one text's request path "
              f"{d['single_p50_ms'] - e:.3f} ms (p50 over the socket less in-process; goal "
              f"<= 0.2); HTTP, JSON and tokenizer CPU {serving:.3f} ms per batch-"
              f"{runs[0]['short_batch']} request")
    print("throughput ratios are caxton/ORT, latency, RSS and load ratios ORT/caxton. caxton's")
    print("figures include HTTP over the Unix socket, its RSS is the daemon's VmHWM, its load the")
    print("in-process model load; ORT runs in-process in a fresh Python process, its RSS is the")
    print("process's ru_maxrss, its load session creation plus the tokenizer.")
    errors = 0
    for label, runs, med in variants:
        if runs[0].get("implementation") != "caxton":
            continue
        conc = med["concurrent_texts_per_s"]
        conc_ratio = median(runs, "concurrent_ratio")  # per round, then the median
        errs = sum(r.get("concurrent_errors", 0) for r in runs)
        errors += errs
        clients = runs[0].get("concurrent_clients", 64)
        print(
            f"{label}, {clients} clients, single texts: {conc:.1f} texts/s (ratio to batch-"
            f"{runs[0]['short_batch']}: {conc_ratio:.2f}, goal >= 0.9; median of the rounds' "
            f"ratios), errors {errs} in all rounds"
        )
    print(
        f"ORT f32's vectors checked against caxton f32's: min cosine "
        f"{min(r.get('check_min_cosine', float('nan')) for r in ort):.7f}; token counts equal"
    )
    status = 0
    # Reduced precision against the f32 reference (ORT f32: transformers' BertModel, mean
    # pooled and normalised, as sentence-transformers computes it), text by text.
    for runs in (int8, fast, bf16, ort8):
        if not runs:
            continue
        pairs_ = [(x, y) for a, b in zip(runs, ort) for x, y in zip(a["check"], b["check"])]
        if any(x["text"] != y["text"] for x, y in pairs_):
            raise SystemExit(f"{variant(runs)} and ORT f32 checked different texts")
        cosines = [cosine(x["embedding"], y["embedding"]) for x, y in pairs_]
        print(f"{variant(runs)} vectors against the f32 reference: min cosine {min(cosines):.7f}")
        if min(cosines) < FLOOR.get(runs[0].get("precision"), COSINE_MIN) and runs is not ort8:
            print(f"error: {variant(runs)} vectors stray from the f32 reference: {cosines}",
                  file=sys.stderr)
            status = 1
    # Against sentence-transformers on the reference texts (each embedded alone): the floors
    # Caxton's precisions promise, beside what ORT's give.
    if args.reference:
        want = json.loads(Path(args.reference).read_text())["vectors"]
        worst = {}
        for runs in (cax, int8, fast, bf16, ort, ort8):
            if not runs or not runs[0].get("reference"):
                continue
            got = runs[0]["reference"]
            if len(got) != len(want):
                raise SystemExit(f"{variant(runs)}: {len(got)} reference vectors, {len(want)} expected")
            cosines = [cosine(x, y) for x, y in zip(got, want)]
            worst[id(runs)] = min(cosines)
            print(f"{variant(runs)}: against sentence-transformers on {len(want)} reference texts: "
                  f"min cosine {min(cosines):.5f} (text {cosines.index(min(cosines))}), "
                  f"mean {statistics.fmean(cosines):.6f}")
            floor = REFERENCE_FLOOR.get(runs[0].get("precision"))
            if variant(runs).startswith("caxton") and floor and min(cosines) < floor:
                print(f"error: {variant(runs)} falls below its documented floor {floor} on the "
                      f"reference texts", file=sys.stderr)
                status = 1
        if id(fast) in worst and id(ort8) in worst:
            above = worst[id(fast)] > worst[id(ort8)]
            print(f"caxton int8-fast's worst reference text {'above' if above else 'NOT above'} "
                  f"ORT int8's ({worst[id(fast)]:.5f} vs {worst[id(ort8)]:.5f})")
    # Ranking kept: every 10th short text as a query against all the short texts (itself left
    # out); the share of its 10 nearest under caxton f32 that each variant also puts there.
    reference = cax[0].get("corpus")
    if reference:
        for runs in (int8, fast, bf16, ort, ort8):
            if runs and runs[0].get("corpus"):
                share = top_k_agreement(reference, runs[0]["corpus"], k=10, every=10)
                queries = len(reference) // 10
                print(f"{variant(runs)}: top-10 neighbours of {queries} queries among "
                      f"{len(reference)} texts agree with caxton f32's on {share * 100:.2f}%")
                # Issue 31's bar for Caxton's reduced precisions; ORT's are shown, not held.
                least = RANKING_MIN if queries >= RANKING_FULL_QUERIES else RANKING_MIN_SMALL
                if variant(runs).startswith("caxton") and share < least:
                    print(f"error: {variant(runs)} keeps only {share * 100:.2f}% of the f32 "
                          f"neighbours (at least {least * 100:.0f}% expected on {queries} "
                          f"queries)", file=sys.stderr)
                    status = 1
    if errors:
        print(f"error: {errors} of caxton's concurrent requests failed", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main({
        "export": (cmd_export, {"--package": REQUIRED, "--out": REQUIRED}),
        "run": (cmd_run, {
            "--model": REQUIRED, "--int8": FLAG, "--threads": {"type": int, "default": 2},
            "--texts": REQUIRED, "--caxton": {}, "--reference": {}, "--json": REQUIRED}),
        "tokens": (cmd_tokens, {
            "--model": REQUIRED, "--int8": FLAG, "--threads": {"type": int, "required": True},
            "--tokens": REQUIRED, "--json": REQUIRED}),
        "summary": (cmd_summary, {
            "--caxton": {"nargs": "+", "required": True}, "--caxton-bf16": MANY,
            "--caxton-int8": MANY, "--caxton-int8-fast": MANY, "--reference": {},
            "--ort": {"nargs": "+", "required": True}, "--ort-int8": MANY, "--cpu": {"default": ""},
            "--export": {}}),
    }, __doc__.splitlines()[0]))
