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
so its peak RSS is that of a plain ORT embedding process.
"""

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tarfile
import time
from pathlib import Path

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


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path):
    """The few scalar keys of manifest.yaml we need (no YAML dependency)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith((" ", "-")) or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def unpack(package, dest):
    """Unpacks the package (zstd-compressed tar) with the `zstd` tool, regular files only."""
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    zstd = subprocess.Popen(["zstd", "-dc", str(package)], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=zstd.stdout, mode="r|") as tar:
        for member in tar:
            name = Path(member.name)
            if not member.isfile() or name.is_absolute() or ".." in name.parts:
                raise SystemExit(f"unexpected entry in {package}: {member.name}")
            with open(dest / name.name, "wb") as f:
                f.write(tar.extractfile(member).read())
    if zstd.wait() != 0:
        raise SystemExit(f"zstd -dc {package} failed")


def cmd_export(args):
    import onnx
    import onnxruntime
    import torch
    import transformers

    out = Path(args.out)
    package = Path(args.package)
    stamp = {
        "package_sha256": sha256_file(package),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    info_path = out / "export.json"
    if info_path.exists() and (out / "model.onnx").exists() and (out / "model.int8.onnx").exists():
        info = json.loads(info_path.read_text())
        if info.get("stamp") == stamp:
            print(
                f"  ONNX model cached: {out / 'model.onnx'} "
                f"({info['attention_nodes']} fused Attention nodes)"
            )
            return
    pkg = out / "package"
    unpack(package, pkg)
    manifest = read_manifest(pkg / "manifest.yaml")
    if manifest.get("architecture") != "bert":
        raise SystemExit(f"the ORT peer exports bert only, not {manifest.get('architecture')}")

    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(pkg / "config.json"))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval()
    state = {k: v.float() for k, v in load_file(str(pkg / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer in recent transformers and the pooler does not
    # touch the token states that are mean-pooled; anything else is an error.
    unexpected = [
        k for k in unexpected if not (k.endswith("position_ids") or k.startswith("pooler."))
    ]
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "eager":
        raise SystemExit(f"BertModel uses {attn} attention, not eager")

    class Wrapped(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state

    wrapped = Wrapped(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    raw = out / "model-raw.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    t = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (ids, mask, types),
            str(raw),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
        )
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
        **optimize_check_quantize(raw, out, check_ids, check_mask, check_types, reference,
                                  check_mask.numpy().astype(bool), 1e-3),
        "max_seq_length": int(manifest["max_seq_length"]),
    }
    info_path.write_text(json.dumps(info, indent=1))
    print(
        f"  exported {out / 'model.onnx'}: {info['attention_nodes']} fused Attention nodes, "
        f"fused {info['fused_operators']}; export {export_s:.1f} s, optimize "
        f"{info['optimize_s']:.1f} s, max |ORT - torch| {info['max_abs_diff_vs_torch']:.2e}"
    )


def optimize_check_quantize(raw, out, ids, mask, types, reference, rows, tolerance):
    """The steps both peers share after torch's export of `raw`: onnxruntime's bert optimizer
    (12 heads, hidden 384) into out/model.onnx, checked against torch's `reference` output on
    the check inputs (`rows`: which outputs count; fails past `tolerance`), then ORT's dynamic
    int8 into out/model.int8.onnx, as fastembed-style deployments quantize: QInt8 weights per
    channel. Returns the graph's op counts, the fused operators, both timings and the largest
    difference from torch."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    t = time.perf_counter()
    opt = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
    tmp = out / "model.onnx.tmp"
    opt.save_model_to_file(str(tmp))
    optimize_s = time.perf_counter() - t
    ops = {}
    for node in onnx.load(str(tmp)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}

    sess = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
            "token_type_ids": types.numpy()}
    got = sess.run(None, feed)[0]
    max_diff = float(np.abs(got - reference)[rows].max())
    if max_diff > tolerance:
        raise SystemExit(f"the optimized graph differs from torch by {max_diff}")
    os.replace(tmp, out / "model.onnx")
    raw.unlink()

    t = time.perf_counter()
    quantize_dynamic(
        str(out / "model.onnx"),
        str(out / "model.int8.onnx.tmp"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # The fused graph's contrib ops defeat shape inference on some MatMul outputs.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    os.replace(out / "model.int8.onnx.tmp", out / "model.int8.onnx")
    return {
        "attention_nodes": ops.get("Attention", 0),
        "fused_operators": fused,
        "node_counts": ops,
        "optimize_s": optimize_s,
        "quantize_s": time.perf_counter() - t,
        "max_abs_diff_vs_torch": max_diff,
    }


def open_session(onnx_dir, int8, threads):
    """ORT's session on onnx_dir's f32 or int8 graph, as both peers run it (threads intra-op,
    sequential, every graph optimization), and the seconds it took to open."""
    import onnxruntime as ort

    t = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    graph = "model.int8.onnx" if int8 else "model.onnx"
    session = ort.InferenceSession(str(onnx_dir / graph), opts, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - t


def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


def measure_workloads(embed, workload):
    """The timed part of a peer's run, as examples/bench times Caxton: one warm-up text, the
    idle RSS, the short and long texts in their batches, each single text alone, then the peak
    RSS. `embed(texts)` returns (vectors, tokens). Returns the result fields."""
    embed(["warm up"])  # as the Caxton side: one single-text request before measuring
    idle_rss = rss_mb()
    short, long_, single = workload["short"], workload["long"], workload["single"]
    sb, lb = workload["short_batch"], workload["long_batch"]
    t = time.perf_counter()
    short_tokens = sum(embed(short[i : i + sb])[1] for i in range(0, len(short), sb))
    short_s = time.perf_counter() - t
    t = time.perf_counter()
    long_tokens = sum(embed(long_[i : i + lb])[1] for i in range(0, len(long_), lb))
    long_s = time.perf_counter() - t
    latencies = []
    for text in single:
        t = time.perf_counter()
        embed([text])
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {
        "short_texts": len(short),
        "short_tokens": short_tokens,
        "short_s": short_s,
        "short_texts_per_s": len(short) / short_s,
        "short_tokens_per_s": short_tokens / short_s,
        "long_texts": len(long_),
        "long_tokens": long_tokens,
        "long_s": long_s,
        "long_texts_per_s": len(long_) / long_s,
        "long_tokens_per_s": long_tokens / long_s,
        "single_n": len(latencies),
        "single_p50_ms": percentile(latencies, 0.5) * 1e3,
        "single_p99_ms": percentile(latencies, 0.99) * 1e3,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cmd_run(args):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_dir = Path(args.model)
    workload = json.loads(Path(args.texts).read_text())
    caxton = json.loads(Path(args.caxton).read_text()) if args.caxton else None
    max_len = json.loads((model_dir / "export.json").read_text())["max_seq_length"]

    t = time.perf_counter()
    session, session_s = open_session(model_dir, args.int8, args.threads)
    tokenizer = Tokenizer.from_file(str(model_dir / "package" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
    load_s = time.perf_counter() - t

    def embed(texts):
        """Vectors and real (non-padding) token count, as Caxton's usage.prompt_tokens."""
        encs = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        types = np.array([e.type_ids for e in encs], dtype=np.int64)
        hidden = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        )[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12), int(mask.sum())

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

    result = {
        "implementation": "onnxruntime int8" if args.int8 else "onnxruntime",
        "precision": "int8" if args.int8 else "f32",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "load_ms": load_s * 1e3,
        "session_ms": session_s * 1e3,
        **measured,
        "corpus": corpus,
        "reference": reference,
    }

    problems = []
    if caxton is not None:
        # In f32 identical outputs, else the comparison means nothing; in int8 what ORT's
        # quantization costs, recorded.
        cosines, check = [], []
        for c in caxton["check"]:
            ours = embed([c["text"]])[0][0]
            check.append({"text": c["text"], "embedding": [float(v) for v in ours]})
            theirs = np.asarray(c["embedding"], dtype=np.float64)
            cos = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
            cosines.append(cos)
        result["check"] = check
        result["check_min_cosine"] = min(cosines)
        if min(cosines) < COSINE_MIN and not args.int8:
            problems.append(f"vectors differ from Caxton's: cosines {cosines}")
        for key in ("short_tokens", "long_tokens"):
            if caxton.get(key) != result[key]:
                problems.append(f"{key}: ORT {result[key]}, Caxton {caxton.get(key)}")
    Path(args.json).write_text(json.dumps(result, indent=1))
    r = result
    print(f"onnxruntime {ort.__version__} peer: {args.threads} intra-op threads, fused graph"
          f"{' after quantize_dynamic (int8)' if args.int8 else ''}, in-process")
    print(f"  session + tokenizer load              {r['load_ms']:>8.0f} ms")
    print(f"  {f'{len(short):,} short texts, batch {sb}':<37}{r['short_texts_per_s']:>8.1f} texts/s"
          f"  {r['short_tokens_per_s']:>8.0f} tokens/s  ({r['short_tokens'] / len(short):.1f} tokens/text)")
    long_texts, lb = r["long_texts"], workload["long_batch"]
    print(f"  {f'{long_texts} texts x 256 tokens, batch {lb}':<37}{r['long_texts_per_s']:>8.1f} texts/s"
          f"  {r['long_tokens_per_s']:>8.0f} tokens/s")
    print(f"  single short text in-process          p50 {r['single_p50_ms']:.2f} ms  "
          f"p99 {r['single_p99_ms']:.2f} ms  (n={r['single_n']})")
    print(f"  RSS idle with model loaded            {r['idle_rss_mb']:>8.0f} MB")
    print(f"  peak RSS (ru_maxrss)                  {r['peak_rss_mb']:>8.0f} MB")
    if "check_min_cosine" in r:
        print(f"  vectors vs caxton f32's               min cosine {r['check_min_cosine']:.7f}")
    if problems:
        raise SystemExit("ORT peer: " + "; ".join(problems))


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def cosine(x, y):
    import numpy as np

    u = np.asarray(x, dtype=np.float64)
    v = np.asarray(y, dtype=np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def cmd_summary(args):
    load = lambda paths: [json.loads(Path(p).read_text()) for p in paths]
    cax, bf16, int8 = load(args.caxton), load(args.caxton_bf16), load(args.caxton_int8)
    fast = load(args.caxton_int8_fast)
    ort, ort8 = load(args.ort), load(args.ort_int8)
    export = json.loads(Path(args.export).read_text()) if args.export else {}
    keys = ("short_texts_per_s", "short_tokens_per_s", "long_tokens_per_s", "single_p50_ms",
            "single_p99_ms", "peak_rss_mb", "load_ms", "concurrent_texts_per_s")
    for runs in (bf16, int8, fast, ort, ort8):
        if runs and len(runs) != len(cax):
            raise SystemExit(f"{len(cax)} caxton f32 runs, but another variant has {len(runs)}")

    def ratio(a, b):
        return a / b if b else float("nan")

    def ratios(c, o):
        return [
            f"{ratio(c['short_texts_per_s'], o['short_texts_per_s']):.2f}",
            f"{ratio(c['long_tokens_per_s'], o['long_tokens_per_s']):.2f}",
            f"{ratio(o['single_p50_ms'], c['single_p50_ms']):.2f} / "
            f"{ratio(o['single_p99_ms'], c['single_p99_ms']):.2f}",
            f"{ratio(o['peak_rss_mb'], c['peak_rss_mb']):.2f}",
            f"{ratio(o['load_ms'], c['load_ms']):.2f}",
        ]

    # Each variant's medians, named by what it really ran (bf16 runs f32 on a CPU without
    # AMX) and, for Caxton, the kernel.
    def name(runs):
        r = runs[0]
        if r.get("implementation", "caxton") != "caxton":
            return r["implementation"]
        kernel = f" ({r['kernel']})" if r.get("kernel") else ""
        return f"caxton {r.get('precision', 'f32')}{kernel}"

    # Each Caxton variant's engine in-process on the same texts (no socket, HTTP or JSON), as
    # a variant of its own: what the daemon's figures are measured against.
    def engine(runs):
        nan = float("nan")
        return [{
            "implementation": f"{name(runs)} in-process",
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
    variants = [(name(runs), runs, {k: median(runs, k) for k in keys})
                for runs in (cax, int8, fast, bf16, ort, ort8) if runs]
    variants += [(name(engines[id(runs)]), engines[id(runs)],
                  {k: median(engines[id(runs)], k) for k in keys})
                 for runs in (cax, int8, fast, bf16) if id(runs) in engines]
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
    widths = [max(len(col[0]), len(col[1]), 10) + 3 for col in columns]

    def line(label, cells):
        return f"{label:<48}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths))

    print()
    if args.cpu:
        print(f"CPU: {args.cpu}")
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
            print(line(f"ratio {name(a)} / {name(b)}", ratios(by[id(a)], by[id(b)])))
    if len(cax) > 1:
        print("per round:")
        for i in range(len(cax)):
            for label, runs, _ in variants:
                print(line(f"  {i + 1} {label}", [col[2](runs[i]) for col in columns]))
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
        print(f"{name(runs)}: daemon / in-process engine {short_ratio:.2f} (short), "
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
            raise SystemExit(f"{name(runs)} and ORT f32 checked different texts")
        cosines = [cosine(x["embedding"], y["embedding"]) for x, y in pairs_]
        print(f"{name(runs)} vectors against the f32 reference: min cosine {min(cosines):.7f}")
        if min(cosines) < FLOOR.get(runs[0].get("precision"), COSINE_MIN) and runs is not ort8:
            print(f"error: {name(runs)} vectors stray from the f32 reference: {cosines}",
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
                raise SystemExit(f"{name(runs)}: {len(got)} reference vectors, {len(want)} expected")
            cosines = [cosine(x, y) for x, y in zip(got, want)]
            worst[id(runs)] = min(cosines)
            print(f"{name(runs)}: against sentence-transformers on {len(want)} reference texts: "
                  f"min cosine {min(cosines):.5f} (text {cosines.index(min(cosines))}), "
                  f"mean {statistics.fmean(cosines):.6f}")
            floor = REFERENCE_FLOOR.get(runs[0].get("precision"))
            if name(runs).startswith("caxton") and floor and min(cosines) < floor:
                print(f"error: {name(runs)} falls below its documented floor {floor} on the "
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
                print(f"{name(runs)}: top-10 neighbours of {queries} queries among "
                      f"{len(reference)} texts agree with caxton f32's on {share * 100:.2f}%")
                # Issue 31's bar for Caxton's reduced precisions; ORT's are shown, not held.
                least = RANKING_MIN if queries >= RANKING_FULL_QUERIES else RANKING_MIN_SMALL
                if name(runs).startswith("caxton") and share < least:
                    print(f"error: {name(runs)} keeps only {share * 100:.2f}% of the f32 "
                          f"neighbours (at least {least * 100:.0f}% expected on {queries} "
                          f"queries)", file=sys.stderr)
                    status = 1
    if errors:
        print(f"error: {errors} of caxton's concurrent requests failed", file=sys.stderr)
        return 1
    return status


def top_k_agreement(reference, other, k, every):
    """Mean share of each query's k nearest (by cosine, itself excluded) under `reference`
    that `other` also ranks in its k nearest; queries are every `every`-th vector."""
    import numpy as np

    def nearest(vectors):
        v = np.asarray(vectors, dtype=np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        q = np.arange(0, len(v), every)
        sims = v[q] @ v.T
        sims[np.arange(len(q)), q] = -np.inf
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    if len(reference) != len(other):
        raise SystemExit(f"ranking check: {len(reference)} reference vectors, {len(other)} others")
    a, b = nearest(reference), nearest(other)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--package", required=True)
    e.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--int8", action="store_true")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--texts", required=True)
    r.add_argument("--caxton")
    r.add_argument("--reference")
    r.add_argument("--json", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--caxton", nargs="+", required=True)
    s.add_argument("--caxton-bf16", nargs="+", default=[])
    s.add_argument("--caxton-int8", nargs="+", default=[])
    s.add_argument("--caxton-int8-fast", nargs="+", default=[])
    s.add_argument("--reference")
    s.add_argument("--ort", nargs="+", required=True)
    s.add_argument("--ort-int8", nargs="+", default=[])
    s.add_argument("--cpu", default="")
    s.add_argument("--export")
    args = p.parse_args()
    return {"export": cmd_export, "run": cmd_run, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
