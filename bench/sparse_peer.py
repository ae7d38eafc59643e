#!/usr/bin/env python3
"""The SPLADE model and the ONNX Runtime peer of the sparse benchmark (driven by bench/sparse).

    sparse_peer.py make-model --package PKG.tar.zst --out DIR
        A SPLADE model of MiniLM's size (6 layers, hidden 384, 12 heads, a 30,522-term
        vocabulary; no SPLADE checkpoint can be downloaded here): the bundled all-MiniLM-L6-v2
        package's encoder under transformers' BertForMaskedLM, its decoder tied to the real
        word table, the transform drawn from torch.manual_seed(SEED), and the decoder's bias
        one constant set so that a text has about 150 terms above zero (a trained SPLADE's
        documents have 100 to 300). Saved as sentence-transformers' SparseEncoder folder
        (Transformer with the fill-mask task, then SpladePooling max/relu).

    sparse_peer.py export --model DIR --out DIR
        The same model plus SPLADE's pooling (mask, ReLU, log1p, max over the tokens) as one
        ONNX graph (torch.onnx.export, dynamo=False; dynamic batch and sequence axes; output
        the weights, batch x vocabulary), then onnxruntime's bert optimizer (12 heads, hidden
        384), checked against torch within 1e-4.

    sparse_peer.py run --onnx DIR --texts T.json --socket SOCK --out R.json [--rounds N]
        Interleaved, N rounds: ORT in this process (2 intra-op threads, 1 inter-op;
        tokenization, padding, the run, and the terms above zero sorted heaviest first, all
        timed) and the daemon over its socket (POST /embed_sparse, the body read whole, not
        parsed, in the timed region), on "batch" (32 texts as one request, 10 times) and
        "single" (one text per request, 100 texts). Checks the daemon's terms against ORT's
        on the first texts (same terms above 1e-3, weights within 5e-3 relative); with --int8
        ORT's int8 graph, the differences printed, not checked.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_peer import sha256_file, unpack  # noqa: E402

SEED = 52
THREADS = 2
TARGET_TERMS = 150


def cmd_make_model(args):
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForMaskedLM

    out = Path(args.out)
    stamp = {"package": sha256_file(Path(args.package)), "seed": SEED, "terms": TARGET_TERMS}
    stamp_path = out.parent / (out.name + ".made.json")
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        print(f"  SPLADE folder cached: {out}")
        return
    work = out.parent / (out.name + ".unpacked")
    unpack(Path(args.package), work)
    base = json.loads((work / "config.json").read_text())
    for k in ("_name_or_path", "transformers_version", "gradient_checkpointing"):
        base.pop(k, None)
    base["architectures"] = ["BertForMaskedLM"]
    base["tie_word_embeddings"] = True
    config = BertConfig(**base)
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = BertForMaskedLM(config).eval()
    encoder = {f"bert.{k}": v.float() for k, v in load_file(str(work / "model.safetensors")).items()
               if not k.startswith("pooler.")}
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    h = config.hidden_size
    g = torch.Generator().manual_seed(SEED)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = json.loads((Path(__file__).resolve().parent.parent / "tests/fixtures/reference/texts.json").read_text())[:40]
    with torch.no_grad():
        p = model.cls.predictions
        p.transform.dense.weight.copy_(torch.randn(h, h, generator=g) / h ** 0.5)
        p.transform.dense.bias.zero_()
        p.transform.LayerNorm.weight.fill_(1.0)
        p.transform.LayerNorm.bias.zero_()
        p.bias.zero_()
        # The bias that leaves about TARGET_TERMS terms above zero per text (median).
        maxima = []
        for t in texts:
            ids = torch.tensor([tok.encode(t).ids[:256]])
            logits = model(input_ids=ids).logits[0]
            maxima.append(logits.max(dim=0).values)
        cut = float(torch.stack([m.sort(descending=True).values[TARGET_TERMS] for m in maxima]).median())
        p.bias.fill_(-cut)
        if hasattr(p.decoder, "bias") and p.decoder.bias is not None:
            p.decoder.bias.copy_(p.bias)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer.json",):
        (out / name).write_bytes((work / name).read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "backend": "tokenizers", "cls_token": "[CLS]", "do_lower_case": True, "mask_token": "[MASK]",
        "model_max_length": 256, "pad_token": "[PAD]", "sep_token": "[SEP]",
        "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"}, indent=2))
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"model_type": "SparseEncoder", "prompts": {}, "default_prompt_name": None}, indent=2))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling",
         "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"}], indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "fill-mask"}, indent=2))
    (out / "1_SpladePooling").mkdir(exist_ok=True)
    (out / "1_SpladePooling/config.json").write_text(json.dumps(
        {"pooling_strategy": "max", "activation_function": "relu", "embedding_dimension": None}))
    stamp_path.write_text(json.dumps(stamp))
    print(f"  SPLADE folder: {out} (decoder bias {-cut:.3f}; missing {missing}, unexpected {unexpected})")


class Splade:
    """BertForMaskedLM then SPLADE's max pooling, as one module to export."""

    def __init__(self, model):
        import torch

        class M(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                logits = self.m(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).logits
                w = torch.log1p(torch.relu(logits * attention_mask.unsqueeze(-1)))
                return w.max(dim=1).values

        self.module = M(model).eval()


def cmd_export(args):
    import numpy as np
    import onnxruntime
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import BertForMaskedLM

    out = Path(args.out)
    if (out / "model.int8.onnx").exists():
        print(f"  ONNX graphs cached: {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    model = BertForMaskedLM.from_pretrained(args.model, attn_implementation="eager").eval()
    m = Splade(model).module
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2054, 2003, 1037, 102]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    raw = out / "raw.onnx"
    with torch.no_grad():
        reference = m(ids, mask, types).numpy()
        torch.onnx.export(m, (ids, mask, types), str(raw), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["weights"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids")} | {"weights": {0: "batch"}})
    opt = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
    opt.save_model_to_file(str(out / "model.onnx"))
    raw.unlink()
    sess = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})[0]
    diff = float(np.abs(got - reference).max())
    if diff > 1e-4:
        raise SystemExit(f"the optimized graph differs from torch by {diff}")
    print(f"  exported and optimized: {out / 'model.onnx'} (max diff vs torch {diff:.1e}; fused {opt.get_fused_operator_statistics()})")
    # ORT's int8 peer, as fastembed-style deployments quantize: dynamic, QInt8 weights per channel.
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    print(f"  quantized: {out / 'model.int8.onnx'}")


def post(sock_path, body):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    data = json.dumps(body).encode()
    s.sendall(b"POST /embed_sparse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
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


def cmd_run(args):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    texts = json.loads(Path(args.texts).read_text())
    short = [t for t in texts if 8 <= len(t) <= 300]
    batch, singles = short[:32], short[:100]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    graph = "model.int8.onnx" if args.int8 else "model.onnx"
    sess = ort.InferenceSession(str(Path(args.onnx) / graph), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0)

    def ort_terms(ts):
        enc = tok.encode_batch(ts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        w = sess.run(None, {"input_ids": ids, "attention_mask": mask,
                            "token_type_ids": np.zeros_like(ids)})[0]
        out = []
        for row in w:
            nz = np.nonzero(row > 0)[0]
            order = nz[np.argsort(-row[nz], kind="stable")]
            out.append([(int(i), float(row[i])) for i in order])
        return out

    def caxton_terms(ts):
        return post(args.socket, {"inputs": ts})

    # Parity first.
    ours = json.loads(caxton_terms(batch[:8]))
    theirs = ort_terms(batch[:8])
    worst, counts = 0.0, []
    for a, b in zip(ours, theirs):
        da = {t["index"]: t["value"] for t in a}
        db = dict(b)
        big_a = {i for i, v in da.items() if v > 1e-3}
        big_b = {i for i, v in db.items() if v > 1e-3}
        if (big_a - set(db) or big_b - set(da)) and not args.int8:
            raise SystemExit(f"different terms: {sorted(big_a ^ big_b)[:10]}")
        for i in big_a & big_b:
            worst = max(worst, abs(da[i] - db[i]) / max(db[i], 0.01))
        counts.append(len(a))
    if worst > 5e-3 and not args.int8:
        raise SystemExit(f"weights differ by {worst} relative")
    print(f"  {'int8' if args.int8 else 'f32'} parity: {len(ours)} texts, {statistics.median(counts)} terms each (median), worst relative {worst:.1e}")

    results = {"caxton": {"batch": [], "single": []}, "ort": {"batch": [], "single": []}}
    for name, fn in (("caxton", caxton_terms), ("ort", ort_terms)):
        for t in batch[:4]:
            fn([t])
    for _ in range(args.rounds):
        for name, fn in (("caxton", caxton_terms), ("ort", ort_terms)):
            t0 = time.perf_counter()
            for _ in range(10):
                fn(batch)
            results[name]["batch"].append(10 * len(batch) / (time.perf_counter() - t0))
            lat = []
            for t in singles:
                t0 = time.perf_counter()
                fn([t])
                lat.append((time.perf_counter() - t0) * 1000)
            results[name]["single"].append(statistics.median(lat))
    Path(args.out).write_text(json.dumps(results))
    for name in ("caxton", "ort"):
        r = results[name]
        print(f"  {name:7} batch of 32: {statistics.median(r['batch']):7.1f} texts/s (rounds {', '.join(f'{x:.0f}' for x in r['batch'])}); "
              f"one text p50 {statistics.median(r['single']):.2f} ms (rounds {', '.join(f'{x:.2f}' for x in r['single'])})")
    ratio_b = statistics.median(results["caxton"]["batch"]) / statistics.median(results["ort"]["batch"])
    ratio_s = statistics.median(results["ort"]["single"]) / statistics.median(results["caxton"]["single"])
    print(f"  Caxton/ORT: throughput {ratio_b:.2f}x, one text {ratio_s:.2f}x (above 1: Caxton faster)")


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
