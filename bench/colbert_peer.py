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

import argparse
import json
import socket
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_peer import sha256_file, unpack  # noqa: E402

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

    out = Path(args.out)
    stamp = {"package": sha256_file(Path(args.package)), "seed": SEED, "dim": DIM}
    stamp_path = out.parent / (out.name + ".made.json")
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        print(f"  ColBERT folder cached: {out}")
        return
    work = out.parent / (out.name + ".unpacked")
    unpack(Path(args.package), work)
    # The bundled package stores f16; the benchmark's model is f32 on both sides.
    from safetensors.torch import load_file, save_file

    weights = work / "model.safetensors"
    save_file({k: v.float().contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    (work / "tokenizer_config.json").write_text(json.dumps({
        "backend": "tokenizers", "cls_token": "[CLS]", "do_lower_case": True, "mask_token": "[MASK]",
        "model_max_length": 256, "pad_token": "[PAD]", "sep_token": "[SEP]",
        "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"}, indent=2))
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
    stamp_path.write_text(json.dumps(stamp))
    print(f"  ColBERT folder: {out}")


def module(model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import BertModel

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                                  add_pooling_layer=False)
            w = load_file(str(Path(model_dir) / "1_Dense/model.safetensors"))["linear.weight"]
            self.proj = torch.nn.Linear(384, DIM, bias=False)
            self.proj.weight.data.copy_(w)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            return torch.nn.functional.normalize(self.proj(h), dim=-1)

    return M().eval()


def cmd_export(args):
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    out = Path(args.out)
    if (out / "model.int8.onnx").exists():
        print(f"  ONNX graphs cached: {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    m = module(args.model)
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2054, 2003, 1037, 102]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    raw = out / "raw.onnx"
    with torch.no_grad():
        reference = m(ids, mask, types).numpy()
        torch.onnx.export(m, (ids, mask, types), str(raw), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["vectors"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "vectors")})
    opt = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
    opt.save_model_to_file(str(out / "model.onnx"))
    raw.unlink()
    sess = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                          "token_type_ids": types.numpy()})[0]
    diff = float(np.abs(got - reference)[mask.numpy() == 1].max())
    if diff > 1e-4:
        raise SystemExit(f"the optimized graph differs from torch by {diff}")
    print(f"  exported and optimized: {out / 'model.onnx'} (max diff vs torch {diff:.1e}; fused {opt.get_fused_operator_statistics()})")
    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    print(f"  quantized: {out / 'model.int8.onnx'}")


def post(sock_path, path, body):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    data = json.dumps(body).encode()
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
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


class Peer:
    """ColBERT on ONNX Runtime, as a client would run it: prompts, the two sides' cuts, query
    expansion, padding, the graph, the kept vectors, MaxSim."""

    def __init__(self, onnx_dir, model_dir, int8):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        graph = "model.int8.onnx" if int8 else "model.onnx"
        self.sess = ort.InferenceSession(str(Path(onnx_dir) / graph), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tok.no_padding()
        self.mask_id = self.tok.token_to_id("[MASK]")
        self.skip = {i for i in (self.tok.token_to_id(c) for c in string.punctuation) if i is not None}

    def _run(self, encs, lengths, attend):
        import numpy as np

        width = max(lengths)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, (e, n) in enumerate(zip(encs, attend)):
            ids[r, :len(e)] = e
            mask[r, :n] = 1
        return self.sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]

    def queries(self, texts):
        self.tok.enable_truncation(QUERY_LENGTH)
        encs = [e.ids for e in self.tok.encode_batch([PROMPTS["query"] + t for t in texts])]
        real = [len(e) for e in encs]
        encs = [e + [self.mask_id] * (QUERY_LENGTH - len(e)) for e in encs]
        out = self._run(encs, [QUERY_LENGTH] * len(encs), real)
        return [out[r] for r in range(len(encs))]

    def documents(self, texts):
        self.tok.enable_truncation(DOCUMENT_LENGTH)
        encs = [e.ids for e in self.tok.encode_batch([PROMPTS["document"] + t for t in texts])]
        lens = [len(e) for e in encs]
        out = self._run(encs, lens, lens)
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
                t0 = time.perf_counter()
                for _ in range(10):
                    pair[fns]()
                results[side][name].append(10 * len(documents) / (time.perf_counter() - t0))
            lat = []
            for q in queries:
                t0 = time.perf_counter()
                (caxton_all([q], "query") if side == "caxton" else peer.queries([q]))
                lat.append((time.perf_counter() - t0) * 1000)
            results[side]["query"].append(statistics.median(lat))
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


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make-model")
    a.add_argument("--package", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("export")
    a.add_argument("--model", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("run")
    a.add_argument("--onnx", required=True)
    a.add_argument("--model", required=True)
    a.add_argument("--texts", required=True)
    a.add_argument("--socket", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--int8", action="store_true", help="ORT's int8 graph (the daemon runs as configured)")
    args = ap.parse_args()
    {"make-model": cmd_make_model, "export": cmd_export, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
