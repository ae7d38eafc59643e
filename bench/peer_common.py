"""What the Python peers of Caxton's benchmarks share (bench/*_peer.py, int8_fast_study.py):
the command line, the package, the export of a BERT model to a fused ONNX graph and its int8,
ONNX Runtime's session and inputs, the timed workloads and their figures, the daemon's socket,
and the small statistics their summaries take.

Only the standard library is imported here, at the top; numpy, onnxruntime, tokenizers, torch
and transformers inside the functions that need them, so that a peer's `run` loads no more
than it measures (its peak RSS is that of a plain ORT process).
"""

import argparse
import collections
import hashlib
import json
import os
import resource
import socket
import statistics
import tarfile
import time
from pathlib import Path

# The three inputs of every BERT graph the peers export and run, in torch.onnx.export's order.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# add_argument's keywords the peers' options repeat.
REQUIRED = {"required": True}
FLAG = {"action": "store_true"}
MANY = {"nargs": "+", "default": []}
# The subcommands of the peers that make a model of the package, export it and run it beside
# the daemon: make-model's, export's and run's options.
MAKE_MODEL = {"--package": REQUIRED, "--out": REQUIRED}
EXPORT = {"--model": REQUIRED, "--out": REQUIRED}
BESIDE_DAEMON = {
    "--onnx": REQUIRED, "--model": REQUIRED, "--texts": REQUIRED, "--socket": REQUIRED,
    "--out": REQUIRED, "--rounds": {"type": int, "default": 3},
    "--int8": {**FLAG, "help": "ORT's int8 graph (the daemon runs as configured)"},
}


def main(commands, description=None):
    """Runs the subcommand the command line names. `commands` maps each name to its function
    and its options ({"--option": add_argument's keywords}, in --help's order); returns what
    the function returns, the process's exit status."""
    p = argparse.ArgumentParser(description=description)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (_, options) in commands.items():
        s = sub.add_parser(name)
        for option, keywords in options.items():
            s.add_argument(option, **keywords)
    args = p.parse_args()
    return commands[args.cmd][0](args)


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


def unpacked(package, out):
    """The package unpacked beside the folder `out` that is made of it."""
    work = out.parent / (out.name + ".unpacked")
    unpack(Path(package), work)
    return work


def stamp_file(out):
    """Where the stamp of what made the folder `out` is kept: beside it."""
    return out.parent / (out.name + ".made.json")


def to_make(args, what, **recipe):
    """The folder args.out to make of args.package by `recipe`, that package unpacked beside it
    and the stamp to leave in stamp_file(out) once it is made; None when it was made so."""
    out = Path(args.out)
    stamp = {"package": sha256_file(Path(args.package)), **recipe}
    if stamp_file(out).exists() and json.loads(stamp_file(out).read_text()) == stamp:
        print(f"  {what} folder cached: {out}")
        return None
    return out, unpacked(args.package, out), stamp


def write_json(folder, files):
    """Writes each of {name: content} into `folder` as indented JSON."""
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2))


def bert_tokenizer_config(max_length, **more):
    """tokenizer_config.json of the package's BERT tokenizer (keys sorted, as transformers
    writes them)."""
    return dict(sorted({
        "backend": "tokenizers", "cls_token": "[CLS]", "do_lower_case": True,
        "mask_token": "[MASK]", "model_max_length": max_length, "pad_token": "[PAD]",
        "sep_token": "[SEP]", "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]", **more,
    }.items()))


# modules.json's first module in a sentence-transformers folder: the transformer itself.
TRANSFORMER_MODULE = {"idx": 0, "name": "0", "path": "",
                      "type": "sentence_transformers.base.modules.transformer.Transformer"}


def head_config(folder, architecture, **settings):
    """The unpacked package's config.json as transformers' BertConfig for `architecture` (the
    package's encoder under another head), with `settings` and eager attention."""
    from transformers import BertConfig

    base = json.loads((folder / "config.json").read_text())
    for key in ("_name_or_path", "transformers_version", "gradient_checkpointing"):
        base.pop(key, None)
    config = BertConfig(**{**base, "architectures": [architecture], **settings})
    config._attn_implementation = "eager"
    return config


def encoder_weights(folder):
    """The unpacked package's encoder weights (f16 in the package) in f32 under `bert.`, as a
    transformers head model names them; the package's pooler left out."""
    from safetensors.torch import load_file

    return {f"bert.{k}": v.float() for k, v in load_file(str(folder / "model.safetensors")).items()
            if not k.startswith("pooler.")}


def bert_model(folder):
    """transformers' BertModel of the unpacked package in f32, eager attention, no pooler."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(folder / "config.json"))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval()
    state = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer in recent transformers and the pooler does not
    # touch the token states that are mean-pooled; anything else is an error.
    unexpected = [k for k in unexpected
                  if not (k.endswith("position_ids") or k.startswith("pooler."))]
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    return model


def export_stamp(out, **sources):
    """The stamp of an export of `sources` (what they are made of) by these versions, for
    out/export.json; None when out/ holds both graphs and an export.json so stamped (said)."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    stamp = {**sources, "torch": torch.__version__, "transformers": transformers.__version__,
             "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    info_path = out / "export.json"
    if info_path.exists() and (out / "model.onnx").exists() and (out / "model.int8.onnx").exists():
        info = json.loads(info_path.read_text())
        if info.get("stamp") == stamp:
            print(f"  ONNX model cached: {out / 'model.onnx'} "
                  f"({info['attention_nodes']} fused Attention nodes)")
            return None
    return stamp


def traceable(model, output, **heads):
    """`model` (transformers') as torch's exporter traces it: forward(input_ids,
    attention_mask, token_type_ids), positional, returning output(the model's outputs,
    attention_mask). `heads`: torch modules `output` applies, registered here so that their
    weights are the graph's, not constants the tracer refuses."""
    import torch

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            for name, head in heads.items():
                self.add_module(name, head)

        def forward(self, input_ids, attention_mask, token_type_ids):
            return output(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                     token_type_ids=token_type_ids), attention_mask)

    return Traced().eval()


def export_onnx(module, inputs, path, output, output_axes):
    """torch's legacy exporter (dynamo=False, opset 17) of `module` on the three BERT inputs,
    their batch and sequence axes dynamic, to `path`; its one output `output` has
    `output_axes`. Called under torch.no_grad()."""
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in INPUTS}
    axes[output] = output_axes
    torch.onnx.export(module, inputs, str(path), dynamo=False, input_names=list(INPUTS),
                      output_names=[output], dynamic_axes=axes, opset_version=17,
                      do_constant_folding=True)


def optimize(raw, out, inputs, reference, rows, tolerance):
    """onnxruntime's bert optimizer (12 heads, hidden 384) on torch's export `raw` into
    out/model.onnx, checked first against torch's `reference` output on the torch tensors
    `inputs` (ids, mask, types; `rows`: which outputs count; fails past `tolerance`); `raw` is
    removed. Returns the optimizer's model, its seconds and the largest difference."""
    import numpy as np
    import onnxruntime
    from onnxruntime.transformers.optimizer import optimize_model

    t = time.perf_counter()
    opt = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
    tmp = out / "model.onnx.tmp"
    opt.save_model_to_file(str(tmp))
    optimize_s = time.perf_counter() - t
    sess = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: x.numpy() for n, x in zip(INPUTS, inputs)})[0]
    max_diff = float(np.abs(got - reference)[rows].max())
    if max_diff > tolerance:
        raise SystemExit(f"the optimized graph differs from torch by {max_diff}")
    os.replace(tmp, out / "model.onnx")
    raw.unlink()
    return opt, optimize_s, max_diff


def quantize(out):
    """ORT's dynamic int8 of out/model.onnx into out/model.int8.onnx, as fastembed-style
    deployments quantize: QInt8 weights per channel, activations quantized per tensor at run
    time. Returns its seconds."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t = time.perf_counter()
    # The fused graph's contrib ops defeat shape inference on some MatMul outputs: hence the
    # default tensor type.
    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx.tmp"),
                     weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(out / "model.int8.onnx.tmp", out / "model.int8.onnx")
    return time.perf_counter() - t


def export_checked(out, make, output, output_axes, real_tokens_only):
    """The export of the peers that keep no record of it (cached while out/model.int8.onnx is
    there): make()'s module exported on two short texts, optimize()d (checked within 1e-4, on
    the real tokens' outputs only or on all), quantize()d, each step said."""
    import torch

    if (out / "model.int8.onnx").exists():
        print(f"  ONNX graphs cached: {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    m = make()
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2054, 2003, 1037, 102]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    raw = out / "raw.onnx"
    with torch.no_grad():
        reference = m(ids, mask, types).numpy()
        export_onnx(m, (ids, mask, types), raw, output, output_axes)
    rows = mask.numpy() == 1 if real_tokens_only else slice(None)
    opt, _, diff = optimize(raw, out, (ids, mask, types), reference, rows, 1e-4)
    print(f"  exported and optimized: {out / 'model.onnx'} (max diff vs torch {diff:.1e}; fused "
          f"{opt.get_fused_operator_statistics()})")
    quantize(out)
    print(f"  quantized: {out / 'model.int8.onnx'}")


def optimize_check_quantize(raw, out, inputs, reference, rows, tolerance):
    """optimize() then quantize(), for the peers that record what they exported: the graph's
    op counts, the fused operators, both timings and the largest difference from torch."""
    import onnx

    opt, optimize_s, max_diff = optimize(raw, out, inputs, reference, rows, tolerance)
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = dict(collections.Counter(node.op_type for node in graph.node))
    return {
        "attention_nodes": ops.get("Attention", 0),
        "fused_operators": {k: v for k, v in opt.get_fused_operator_statistics().items() if v},
        "node_counts": ops,
        "optimize_s": optimize_s,
        "quantize_s": quantize(out),
        "max_abs_diff_vs_torch": max_diff,
    }


def open_session(onnx_dir, int8, threads):
    """ORT's session on onnx_dir's f32 or int8 graph, as every peer runs it (threads intra-op,
    sequential, every graph optimization), and the seconds it took to open."""
    import onnxruntime as ort

    t = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    graph = "model.int8.onnx" if int8 else "model.onnx"
    session = ort.InferenceSession(str(Path(onnx_dir) / graph), opts,
                                   providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - t


def open_tokenizer(path, max_length):
    """tokenizers' Tokenizer of tokenizer.json, truncating (longest first) at max_length and
    padding with id 0 to the batch's longest."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def encoded(encodings):
    """The BERT inputs of a padded batch of tokenizers' encodings."""
    import numpy as np

    return {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            for name, field in zip(INPUTS, ("ids", "attention_mask", "type_ids"))}


def padded(rows, attended=None):
    """The BERT inputs of token id lists: the ids padded with 0 to the longest, the mask over
    each row's first attended[i] ids (all of them by default), token types 0."""
    import numpy as np

    ids = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, (row, n) in enumerate(zip(rows, attended or [len(r) for r in rows])):
        ids[i, : len(row)] = row
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def open_peer(onnx_dir, int8, threads, tokenizer_json):
    """open_session(), and the tokenizer truncating at export.json's max_seq_length; the
    seconds of the session, and of both."""
    max_len = json.loads((onnx_dir / "export.json").read_text())["max_seq_length"]
    t = time.perf_counter()
    session, session_s = open_session(onnx_dir, int8, threads)
    tokenizer = open_tokenizer(tokenizer_json, max_len)
    return session, tokenizer, session_s, time.perf_counter() - t


def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


def latencies(call, items):
    """The seconds of call(item) for each item in turn, sorted."""
    out = []
    for item in items:
        t = time.perf_counter()
        call(item)
        out.append(time.perf_counter() - t)
    return sorted(out)


def rate(call, repeats, items):
    """Items a second of `repeats` calls of call(), each on `items` items."""
    t = time.perf_counter()
    for _ in range(repeats):
        call()
    return repeats * items / (time.perf_counter() - t)


def measure_workloads(embed, workload, warm_up="warm up"):
    """The timed part of a peer's run, as examples/bench times Caxton: one warm-up item, the
    idle RSS, the short and long items in their batches, each single item alone, then the peak
    RSS. `embed(items)` takes a batch (texts, or token id lists) and returns (vectors, tokens).
    Returns the result fields."""
    embed([warm_up])  # as the Caxton side: one single-text request before measuring
    idle_rss = rss_mb()
    result = {}
    for name in ("short", "long"):
        items, size = workload[name], workload[f"{name}_batch"]
        t = time.perf_counter()
        tokens = sum(embed(items[i : i + size])[1] for i in range(0, len(items), size))
        s = time.perf_counter() - t
        result.update({f"{name}_texts": len(items), f"{name}_tokens": tokens, f"{name}_s": s,
                       f"{name}_texts_per_s": len(items) / s, f"{name}_tokens_per_s": tokens / s})
    single_s = latencies(lambda item: embed([item]), workload["single"])
    return {
        **result,
        "single_n": len(single_s),
        "single_p50_ms": percentile(single_s, 0.5) * 1e3,
        "single_p99_ms": percentile(single_s, 0.99) * 1e3,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def print_figures(r, short_batch, long_batch, load_label):
    """The figures of measure_workloads' result `r`, a line each, as examples/bench prints
    Caxton's."""
    print(f"  {load_label:<38}{r['load_ms']:>8.0f} ms")
    short = f"{r['short_texts']:,} short texts, batch {short_batch}"
    print(f"  {short:<37}{r['short_texts_per_s']:>8.1f} texts/s  {r['short_tokens_per_s']:>8.0f}"
          f" tokens/s  ({r['short_tokens'] / r['short_texts']:.1f} tokens/text)")
    long_ = f"{r['long_texts']} texts x 256 tokens, batch {long_batch}"
    print(f"  {long_:<37}{r['long_texts_per_s']:>8.1f} texts/s  {r['long_tokens_per_s']:>8.0f}"
          f" tokens/s")
    print(f"  {'single short text in-process':<38}p50 {r['single_p50_ms']:.2f} ms  "
          f"p99 {r['single_p99_ms']:.2f} ms  (n={r['single_n']})")
    print(f"  {'RSS idle with model loaded':<38}{r['idle_rss_mb']:>8.0f} MB")
    print(f"  {'peak RSS (ru_maxrss)':<38}{r['peak_rss_mb']:>8.0f} MB")
    if "check_min_cosine" in r:
        label = "vectors vs caxton f32's"
        print(f"  {label:<38}min cosine {r['check_min_cosine']:.7f}")


def post(sock_path, path, body):
    """POST `body` as JSON to the daemon's `path` over its Unix socket, one connection a
    request; the answer's body, read whole, not parsed (fails unless 200)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    data = json.dumps(body).encode()
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    chunks = []
    while True:
        c = s.recv(1 << 20)
        if not c:
            break
        chunks.append(c)
    s.close()
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the daemon answered {head[:200]!r}: {payload[:300]!r}")
    return payload


def heading(cpu):
    """A summary's first lines: a blank one, then the CPU when known."""
    print()
    if cpu:
        print(f"CPU: {cpu}")


def load_runs(paths):
    return [json.loads(Path(p).read_text()) for p in paths]


def variant(runs):
    """A variant's name: what its runs ran, for Caxton with its precision and kernel."""
    r = runs[0]
    if r.get("implementation", "caxton") != "caxton":
        return r["implementation"]
    kernel = f" ({r['kernel']})" if r.get("kernel") else ""
    return f"caxton {r.get('precision', 'f32')}{kernel}"


def with_medians(groups, keys):
    """(name, runs, {key: median}) of each variant of `groups` that has runs."""
    return [(variant(runs), runs, {k: median(runs, k) for k in keys}) for runs in groups if runs]


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def cosine(x, y):
    import numpy as np

    u = np.asarray(x, dtype=np.float64)
    v = np.asarray(y, dtype=np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def top_k_agreement(reference, other, k, every):
    """Mean share of each query's k nearest (by cosine, itself excluded) under `reference`
    that `other` also ranks in its k nearest; queries are every `every`-th vector."""
    import numpy as np

    def nearest(vectors):
        v = np.asarray(vectors, dtype=np.float64)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        q = np.arange(0, len(v), every)
        sims = v[q] @ v.T
        sims[np.arange(len(q)), q] = -np.inf
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    if len(reference) != len(other):
        raise SystemExit(f"ranking check: {len(reference)} reference vectors, {len(other)} others")
    a, b = nearest(reference), nearest(other)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def layout(label_width, headings, pad):
    """A table's row(label, cells): the label left in label_width, each cell right in its
    column, as wide as its headings (at least 10) and `pad`."""
    widths = [max(*map(len, h), 10) + pad for h in headings]
    return lambda label, cells: f"{label:<{label_width}}" + "".join(
        f"{cell:>{w}}" for cell, w in zip(cells, widths))


def per_round(variants, line, cells):
    """Each round's figures under the medians, when there was more than one: `variants` are
    (label, runs, medians), `line` lays out a row, cells(run) are its cells."""
    if len(variants[0][1]) > 1:
        print("per round:")
        for i in range(len(variants[0][1])):
            for label, runs, _ in variants:
                print(line(f"  {i + 1} {label}", cells(runs[i])))
