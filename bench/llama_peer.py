#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) as Caxton's peer on a decoder embedder (issue 33):
the engine Ollama serves EmbeddingGemma and Qwen3-Embedding with. Driven by bench/vs-llama.

  convert --folder DIR --converter VENDOR --out DIR   GGUF f32 and q8_0, by the converter
                                                      llama.cpp ships (VENDOR: its source tree)
  run --gguf FILE --pooling mean|last --texts T --caxton C --json OUT
                                                      the bench/compare workloads, same texts,
                                                      same batches, same order
  summary --cpu S --caxton-f32 F... [--caxton-int8 F...] [--caxton-int8-fast F...]
          --llama-f32 F... --llama-q8_0 F...         medians, ratios and agreement

The peer runs as llama.cpp's own embedding path does: one llama_decode per request, n_ctx =
n_batch = n_ubatch = the largest request's tokens rounded up to 256, flash attention on, 2 threads,
vectors L2-normalised, a fresh process per run. Its figures are taken as Caxton's are: load
(the Llama object), the short and long workloads' texts per second, one text's p50/p99 and the
process's peak RSS (ru_maxrss).
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peer_common import MANY, REQUIRED, cosine, main, measure_workloads

THREADS = 2


def cmd_convert(args):
    vendor = Path(args.converter)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = (Path(args.folder) / "modules.json").read_text().count("models.Dense") > 0
    env = dict(os.environ, PYTHONPATH=f"{vendor / 'gguf-py'}:{vendor}")
    for outtype in ("f32", "q8_0"):
        target = out / f"model-{outtype}.gguf"
        if target.exists():
            print(f"  {target} (cached)")
            continue
        cmd = [sys.executable, str(vendor / "convert_hf_to_gguf.py"), args.folder,
               "--outtype", outtype, "--outfile", str(target) + ".tmp"]
        if dense:
            # EmbeddingGemma's two Dense modules after pooling, which llama.cpp runs too.
            cmd.append("--sentence-transformers-dense-modules")
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        os.replace(str(target) + ".tmp", target)
        print(f"  {target}: {target.stat().st_size} bytes, {time.perf_counter() - t:.1f} s")


def cmd_run(args):
    import llama_cpp

    workload = json.loads(Path(args.texts).read_text())
    pooling = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
               "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}[args.pooling]
    # The smallest context that takes the largest request in one decode (llama.cpp sizes its
    # buffers by it, so a larger one would only inflate its RSS), counted with its tokenizer.
    vocab = llama_cpp.Llama(args.gguf, vocab_only=True, verbose=False)
    count = lambda text: len(vocab.tokenize(text.encode("utf-8")))
    requests = ([workload["short"][i:i + workload["short_batch"]]
                 for i in range(0, len(workload["short"]), workload["short_batch"])]
                + [workload["long"][i:i + workload["long_batch"]]
                   for i in range(0, len(workload["long"]), workload["long_batch"])])
    context = -(-max(sum(count(t) for t in r) for r in requests) // 256) * 256
    del vocab
    t = time.perf_counter()
    llm = llama_cpp.Llama(
        args.gguf, embedding=True, n_ctx=context, n_batch=context, n_ubatch=context,
        n_threads=THREADS, n_threads_batch=THREADS, flash_attn=True, pooling_type=pooling,
        verbose=False,
    )
    load_s = time.perf_counter() - t

    def embed(texts):
        return llm.embed(texts, normalize=True, truncate=True, return_count=True)

    measured = measure_workloads(embed, workload)
    short, sb = workload["short"], workload["short_batch"]
    corpus = [v for i in range(0, len(short), sb) for v in embed(short[i:i + sb])[0]]
    result = {
        "implementation": f"llama.cpp {Path(args.gguf).stem.split('-')[-1]}",
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "gguf_bytes": Path(args.gguf).stat().st_size,
        "threads": THREADS,
        "context": context,
        "load_ms": load_s * 1e3,
        **measured,
        "corpus": corpus,
    }
    if args.caxton:
        mine = json.loads(Path(args.caxton).read_text())["corpus"]
        result["agreement_with_caxton_f32"] = agreement(mine, corpus)
    Path(args.json).write_text(json.dumps(result))
    print(f"  {result['implementation']}: short {result['short_texts_per_s']:.1f} texts/s, "
          f"long {result['long_texts_per_s']:.2f} texts/s, one text p50 "
          f"{result['single_p50_ms']:.2f} ms, load {result['load_ms']:.0f} ms, peak RSS "
          f"{result['peak_rss_mb']:.0f} MB")


def agreement(a, b):
    """Min and mean cosine, text by text, of two runs' vectors of the short texts."""
    c = [cosine(x, y) for x, y in zip(a, b)]
    return {"min": min(c), "mean": sum(c) / len(c), "texts": len(c)}


def cmd_summary(args):
    rows = [("caxton f32", args.caxton_f32), ("caxton int8", args.caxton_int8),
            ("caxton int8-fast", args.caxton_int8_fast), ("llama.cpp f32", args.llama_f32),
            ("llama.cpp q8_0", args.llama_q8_0)]
    runs = {name: [json.loads(Path(f).read_text()) for f in files] for name, files in rows if files}
    med = lambda name, key: statistics.median(r[key] for r in runs[name])
    print(f"\n{args.cpu}")
    print(f"{'':18} {'short texts/s':>14} {'long texts/s':>13} {'one text p50 / p99 ms':>22} "
          f"{'load ms':>8} {'peak RSS MB':>12}")
    for name in runs:
        print(f"{name:18} {med(name, 'short_texts_per_s'):14.1f} {med(name, 'long_texts_per_s'):13.2f} "
              f"{med(name, 'single_p50_ms'):11.2f} / {med(name, 'single_p99_ms'):8.2f} "
              f"{med(name, 'load_ms'):8.0f} {max(r['peak_rss_mb'] for r in runs[name]):12.0f}")
    print("\nratios, Caxton / llama.cpp (throughput: higher is faster; one text: time, lower is faster)")
    for mine, peer in [("caxton f32", "llama.cpp f32"), ("caxton int8", "llama.cpp q8_0"),
                       ("caxton int8-fast", "llama.cpp q8_0")]:
        if mine in runs and peer in runs:
            print(f"  {mine} vs {peer}: short {med(mine, 'short_texts_per_s') / med(peer, 'short_texts_per_s'):.2f}×, "
                  f"long {med(mine, 'long_texts_per_s') / med(peer, 'long_texts_per_s'):.2f}×, "
                  f"one text {med(mine, 'single_p50_ms') / med(peer, 'single_p50_ms'):.2f}× its time, "
                  f"peak RSS {max(r['peak_rss_mb'] for r in runs[mine]):.0f} vs "
                  f"{max(r['peak_rss_mb'] for r in runs[peer]):.0f} MB")
    reference = runs["caxton f32"][0]["corpus"]
    print("\nagreement with caxton f32 over the short texts (min / mean cosine)")
    for name in runs:
        if name != "caxton f32":
            a = agreement(reference, runs[name][0]["corpus"])
            print(f"  {name}: {a['min']:.6f} / {a['mean']:.6f} ({a['texts']} texts)")


if __name__ == "__main__":
    sys.exit(main({
        "convert": (cmd_convert, {"--folder": REQUIRED, "--converter": REQUIRED, "--out": REQUIRED}),
        "run": (cmd_run, {
            "--gguf": REQUIRED, "--pooling": {"choices": ["mean", "last"], "required": True},
            "--texts": REQUIRED, "--caxton": {}, "--json": REQUIRED}),
        "summary": (cmd_summary, {
            "--cpu": {"default": ""},
            **{f"--{name}": MANY for name in ("caxton-f32", "caxton-int8", "caxton-int8-fast",
                                              "llama-f32", "llama-q8_0")}}),
    }, __doc__.splitlines()[0]))
