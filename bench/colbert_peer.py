#!/usr/bin/env python3
"""The ColBERT model and the ONNX Runtime peer of the late-interaction benchmark (driven by
bench/colbert).

    colbert_peer.py make-model --package PKG.tar.zst --out DIR
        A ColBERT of MiniLM's size (no ColBERT checkpoint can be downloaded here): the bundled
        all-MiniLM-L6-v2 package's encoder, a 384->96 bias-free projection drawn from
        torch.manual_seed(SEED) (answerai-colbert-small-v1's width), saved by
        sentence-transformers' MultiVectorEncoder with ColBERT's settings: "[Q] "/"[D] "
        prompts, queries expanded to 32 tokens by unattended [MASK]s, documents cut at 180
        tokens, a punctuation skip-list for documents.

    colbert_peer.py export --model DIR --out DIR
        The encoder, the projection and the per-token normalisation as one ONNX graph
        (torch.onnx.export, dynamo=False; dynamic batch and sequence; output batch x sequence
        x 96), then onnxruntime's bert optimizer (12 heads, hidden 384), checked against
        torch within 1e-4; and its dynamic int8 (QInt8 weights per channel).

    colbert_peer.py run --onnx DIR --model DIR --texts T.json --socket SOCK [--rounds N] [--int8]
        Interleaved, N rounds: ORT in this process (2 intra-op threads, 1 inter-op; the
        prompts, tokenization, query expansion, padding, the run, the kept vectors and MaxSim
        in numpy, all timed) and the daemon over its socket (the body read whole, not parsed):
        "rerank" (one query against 32 documents, 10 times: POST /rerank), "documents" (32
        documents' token vectors, 10 times: POST /embed_all) and "query" (one query's vectors,
        100 queries: POST /embed_all with input_type query, p50). Checks first that the
        daemon's vectors and scores match ORT's (cosine 0.999, scores 1e-3 relative; with
        --int8 printed, not checked).
"""

import json
import statistics
import string
import sys
from pathlib import Path

from peer_common import (BESIDE_DAEMON, EXPORT, MAKE_MODEL, bert_tokenizer_config, export_checked,
                         latencies, main, open_session, padded, post, rate, stamp_file, to_make,
                         traceable, write_json)

SEED = 52
THREADS = 2
DIM = 96
QUERY_LENGTH = 32
DOCUMENT_LENGTH = 180
PROMPTS = {"query": "[Q] ", "document": "[D] "}


def cmd_make_model(args):
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    made = to_make(args, "ColBERT", seed=SEED, dim=DIM)
    if made is None:
        return
    out, work, stamp = made
    # The bundled package stores f16; the benchmark's model is f32 on both sides.
    from safetensors.torch import load_file, save_file

    weights = work / "model.safetensors"
    save_file({k: v.float().contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    write_json(work, {"tokenizer_config.json": bert_tokenizer_config(256)})
    torch.manual_seed(SEED)
    transformer = Transformer(str(work), document_length=DOCUMENT_LENGTH,
                              query_expansion={"strategy": "fixed", "attend": False, "length": QUERY_LENGTH})
    dense = Dense(384, DIM, bias=False, activation_function=torch.nn.Identity(),
                  module_input_name="token_embeddings")
    with torch.no_grad():
        dense.linear.weight.copy_(torch.randn(DIM, 384) / 384 ** 0.5)
    encoder = MultiVectorEncoder(
        modules=[transformer, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                 Normalize(module_input_name="token_embeddings")],
        prompts=PROMPTS, device="cpu")
    encoder.save(str(out))
    stamp_file(out).write_text(json.dumps(stamp))
    print(f"  ColBERT folder: {out}")


def module(model_dir):
    """The encoder, the projection and the per-token normalisation, as torch's exporter traces
    them."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                     add_pooling_layer=False)
    proj = torch.nn.Linear(384, DIM, bias=False)
    proj.weight.data.copy_(
        load_file(str(Path(model_dir) / "1_Dense/model.safetensors"))["linear.weight"])
    return traceable(bert, lambda out, mask: torch.nn.functional.normalize(
        proj(out.last_hidden_state), dim=-1), proj=proj)


def cmd_export(args):
    export_checked(Path(args.out), lambda: module(args.model), "vectors",
                   {0: "batch", 1: "sequence"}, real_tokens_only=True)


class Peer:
    """ColBERT on ONNX Runtime, as a client would run it: prompts, the two sides' cuts, query
    expansion, padding, the graph, the kept vectors, MaxSim."""

    def __init__(self, onnx_dir, model_dir, int8):
        from tokenizers import Tokenizer

        self.sess, _ = open_session(onnx_dir, int8, THREADS)
        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tok.no_padding()
        self.mask_id = self.tok.token_to_id("[MASK]")
        self.skip = {i for i in (self.tok.token_to_id(c) for c in string.punctuation) if i is not None}

    def _run(self, encs, attend):
        return self.sess.run(None, padded(encs, attend))[0]

    def queries(self, texts):
        self.tok.enable_truncation(QUERY_LENGTH)
        encs = [e.ids for e in self.tok.encode_batch([PROMPTS["query"] + t for t in texts])]
        real = [len(e) for e in encs]
        encs = [e + [self.mask_id] * (QUERY_LENGTH - len(e)) for e in encs]
        out = self._run(encs, real)
        return [out[r] for r in range(len(encs))]

    def documents(self, texts):
        self.tok.enable_truncation(DOCUMENT_LENGTH)
        encs = [e.ids for e in self.tok.encode_batch([PROMPTS["document"] + t for t in texts])]
        lens = [len(e) for e in encs]
        out = self._run(encs, lens)
        return [out[r, [j for j, i in enumerate(e) if i not in self.skip]] for r, e in enumerate(encs)]

    def rerank(self, query, documents):
        q = self.queries([query])[0]
        return [float((q @ d.T).max(axis=1).sum()) for d in self.documents(documents)]


def cmd_run(args):
    import numpy as np

    texts = json.loads(Path(args.texts).read_text())
    short = [t for t in texts if 8 <= len(t) <= 300]
    documents, queries = short[:32], [t for t in texts if 3 <= len(t) <= 60][:100]
    peer = Peer(args.onnx, args.model, args.int8)
    model = "colbert-minilm"

    def caxton_rerank(q):
        return post(args.socket, "/rerank", {"model": model, "query": q, "texts": documents, "truncate": True})

    def caxton_all(ts, side):
        return post(args.socket, "/embed_all", {"model": model, "inputs": ts, "input_type": side, "truncate": True})

    # Parity first.
    ours_q = [np.array(v) for v in json.loads(caxton_all(queries[:4], "query"))]
    ours_d = [np.array(v) for v in json.loads(caxton_all(documents[:8], "document"))]
    theirs_q, theirs_d = peer.queries(queries[:4]), peer.documents(documents[:8])
    worst = 1.0
    for a, b in list(zip(ours_q, theirs_q)) + list(zip(ours_d, theirs_d)):
        if a.shape != b.shape:
            raise SystemExit(f"vectors differ in shape: {a.shape} vs {b.shape}")
        worst = min(worst, float((a * b).sum(axis=1).min()))
    ours_s = [r["score"] for r in sorted(json.loads(caxton_rerank(queries[0])), key=lambda r: r["index"])]
    theirs_s = peer.rerank(queries[0], documents)
    score = max(abs(a - b) / abs(b) for a, b in zip(ours_s, theirs_s))
    label = "int8" if args.int8 else "f32"
    print(f"  {label} parity: worst token cosine {worst:.6f}, worst score difference {score:.1e} relative")
    if not args.int8 and (worst < 0.999 or score > 1e-3):
        raise SystemExit("the daemon and ORT disagree")

    runs = {
        "rerank": (lambda: caxton_rerank(queries[1]), lambda: peer.rerank(queries[1], documents)),
        "documents": (lambda: caxton_all(documents, "document"), lambda: peer.documents(documents)),
    }
    results = {n: {"rerank": [], "documents": [], "query": []} for n in ("caxton", "ort")}
    for _ in range(2):
        caxton_rerank(queries[2])
        peer.rerank(queries[2], documents)
    for _ in range(args.rounds):
        for side, fns in (("caxton", 0), ("ort", 1)):
            for name, pair in runs.items():
                results[side][name].append(rate(pair[fns], 10, len(documents)))
            query = (lambda q: caxton_all([q], "query")) if side == "caxton" else (
                lambda q: peer.queries([q]))
            results[side]["query"].append(statistics.median(latencies(query, queries)) * 1000)
    Path(args.out).write_text(json.dumps(results))
    med = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
    for side in ("caxton", "ort"):
        r = results[side]
        print(f"  {side:7} rerank 32 documents: {med[side]['rerank']:6.1f} documents/s (rounds {', '.join(f'{x:.0f}' for x in r['rerank'])}); "
              f"32 documents' vectors: {med[side]['documents']:6.1f} documents/s (rounds {', '.join(f'{x:.0f}' for x in r['documents'])}); "
              f"one query p50 {med[side]['query']:.2f} ms (rounds {', '.join(f'{x:.2f}' for x in r['query'])})")
    print(f"  Caxton/ORT: rerank {med['caxton']['rerank'] / med['ort']['rerank']:.2f}x, "
          f"documents {med['caxton']['documents'] / med['ort']['documents']:.2f}x, "
          f"one query {med['ort']['query'] / med['caxton']['query']:.2f}x (above 1: Caxton faster)")


if __name__ == "__main__":
    sys.exit(main({"make-model": (cmd_make_model, MAKE_MODEL), "export": (cmd_export, EXPORT),
                   "run": (cmd_run, BESIDE_DAEMON)}))
