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

import json
import statistics
import sys
from pathlib import Path

from peer_common import (BESIDE_DAEMON, EXPORT, MAKE_MODEL, TRANSFORMER_MODULE,
                         bert_tokenizer_config, encoded, encoder_weights, export_checked,
                         head_config, latencies, main, open_session, open_tokenizer, post, rate,
                         stamp_file, to_make, traceable, write_json)

SEED = 52
THREADS = 2
TARGET_TERMS = 150


def cmd_make_model(args):
    import torch
    from transformers import BertForMaskedLM

    made = to_make(args, "SPLADE", seed=SEED, terms=TARGET_TERMS)
    if made is None:
        return
    out, work, stamp = made
    config = head_config(work, "BertForMaskedLM", tie_word_embeddings=True)
    torch.manual_seed(SEED)
    model = BertForMaskedLM(config).eval()
    missing, unexpected = model.load_state_dict(encoder_weights(work), strict=False)
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
    write_json(out, {
        "tokenizer_config.json": bert_tokenizer_config(256),
        "config_sentence_transformers.json":
            {"model_type": "SparseEncoder", "prompts": {}, "default_prompt_name": None},
        "modules.json": [TRANSFORMER_MODULE, {
            "idx": 1, "name": "1", "path": "1_SpladePooling",
            "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"}],
        "sentence_bert_config.json": {"transformer_task": "fill-mask"},
    })
    (out / "1_SpladePooling").mkdir(exist_ok=True)
    (out / "1_SpladePooling/config.json").write_text(json.dumps(
        {"pooling_strategy": "max", "activation_function": "relu", "embedding_dimension": None}))
    stamp_file(out).write_text(json.dumps(stamp))
    print(f"  SPLADE folder: {out} (decoder bias {-cut:.3f}; missing {missing}, unexpected {unexpected})")


def splade(out, attention_mask):
    """SPLADE's max pooling of BertForMaskedLM's logits: each term's largest log(1 + ReLU)
    over the attended tokens."""
    import torch

    w = torch.log1p(torch.relu(out.logits * attention_mask.unsqueeze(-1)))
    return w.max(dim=1).values


def cmd_export(args):
    def make():
        from transformers import BertForMaskedLM

        model = BertForMaskedLM.from_pretrained(args.model, attn_implementation="eager").eval()
        return traceable(model, splade)

    export_checked(Path(args.out), make, "weights", {0: "batch"}, real_tokens_only=False)


def cmd_run(args):
    import numpy as np

    texts = json.loads(Path(args.texts).read_text())
    short = [t for t in texts if 8 <= len(t) <= 300]
    batch, singles = short[:32], short[:100]
    sess, _ = open_session(args.onnx, args.int8, THREADS)
    tok = open_tokenizer(Path(args.model) / "tokenizer.json", 256)

    def ort_terms(ts):
        w = sess.run(None, encoded(tok.encode_batch(ts)))[0]
        out = []
        for row in w:
            nz = np.nonzero(row > 0)[0]
            order = nz[np.argsort(-row[nz], kind="stable")]
            out.append([(int(i), float(row[i])) for i in order])
        return out

    def caxton_terms(ts):
        return post(args.socket, "/embed_sparse", {"inputs": ts})

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
            results[name]["batch"].append(rate(lambda: fn(batch), 10, len(batch)))
            lat = latencies(lambda t: fn([t]), singles)
            results[name]["single"].append(statistics.median(lat) * 1000)
    Path(args.out).write_text(json.dumps(results))
    for name in ("caxton", "ort"):
        r = results[name]
        print(f"  {name:7} batch of 32: {statistics.median(r['batch']):7.1f} texts/s (rounds {', '.join(f'{x:.0f}' for x in r['batch'])}); "
              f"one text p50 {statistics.median(r['single']):.2f} ms (rounds {', '.join(f'{x:.2f}' for x in r['single'])})")
    ratio_b = statistics.median(results["caxton"]["batch"]) / statistics.median(results["ort"]["batch"])
    ratio_s = statistics.median(results["ort"]["single"]) / statistics.median(results["caxton"]["single"])
    print(f"  Caxton/ORT: throughput {ratio_b:.2f}x, one text {ratio_s:.2f}x (above 1: Caxton faster)")


if __name__ == "__main__":
    sys.exit(main({"make-model": (cmd_make_model, MAKE_MODEL), "export": (cmd_export, EXPORT),
                   "run": (cmd_run, BESIDE_DAEMON)}))
