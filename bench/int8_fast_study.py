"""int8-fast's scheme simulated in torch on the bundled MiniLM: how close each candidate way of
quantizing the linear layers keeps the vectors, before any kernel is written for it.

    target/bench-venv/bin/python bench/int8_fast_study.py [--levels 255] [--down int8] ...

Needs what bench/compare leaves behind: the unpacked package (target/bench-compare/ort/package)
and a round's short texts (target/bench-compare/results/texts-1.json). It prints, per scheme,
the min and mean cosine against sentence-transformers on the 153 reference texts
(tests/fixtures/reference/minilm-vectors.json) and the share of f32's top-10 neighbours kept
(every 10th of 1,000 short texts as a query), the two figures bench/compare holds int8-fast to.

The simulation quantizes as the engine does (engine::kernels::int8_fast, engine::kernels::int8)
but dequantizes in float64, so it shows the scheme's error, not a kernel's; the engine's own
figures are the proof (bench/compare, tests/fidelity_engine.rs).
"""

import argparse
import json
import math
import pathlib
import re

import numpy as np
import torch

from peer_common import bert_model, top_k_agreement

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "target/bench-compare/ort/package"
REFERENCE = ROOT / "tests/fixtures/reference/minilm-vectors.json"
CORPUS = ROOT / "target/bench-compare/results/texts-1.json"
CALIBRATION = ROOT / "src/engine/calibration.rs"


def calibration_texts():
    """The engine's built-in calibration texts, read out of its source."""
    src = CALIBRATION.read_text()
    body = src[src.index("pub const TEXTS") : src.index("];")]
    texts = []
    for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', body, re.S):
        lit = re.sub(r"\\\n\s*", "", lit)
        texts.append(lit.encode().decode("unicode_escape").encode("latin-1").decode())
    return texts


def hadamard(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def block_of(inputs, limit):
    b = limit
    while b > 1 and inputs % b:
        b //= 2
    return b


_ROTATIONS = {}


def rotation(inputs, limit, mix3):
    key = (inputs, limit, mix3)
    if key not in _ROTATIONS:
        _ROTATIONS[key] = _rotation(inputs, limit, mix3)
    return _ROTATIONS[key]


def _rotation(inputs, limit, mix3):
    """The block-diagonal Hadamard the engine turns inputs by (unnormalised), optionally
    followed by an orthogonal mix of the three blocks of a 3 × 128 row."""
    b = block_of(inputs, limit)
    r = torch.block_diag(*[hadamard(b)] * (inputs // b)) / math.sqrt(b)
    if mix3 and inputs // b == 3:
        m = torch.tensor(
            [[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64
        )
        m = m / m.norm(dim=1, keepdim=True)
        r = r @ torch.kron(m.T.contiguous(), torch.eye(b, dtype=torch.float64))
    return r


def fake_rows(x, levels, blocks=1, clip=1.0):
    """Per row (and per block of a row), asymmetric onto 0..levels, the range holding 0."""
    if levels is None:
        return x
    rows, k = x.shape
    xb = x.reshape(rows, blocks, k // blocks)
    lo = torch.clamp(xb.amin(dim=2, keepdim=True), max=0) * clip
    hi = torch.clamp(xb.amax(dim=2, keepdim=True), min=0) * clip
    scale = (hi - lo) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-lo / scale).clamp(0, levels)
    q = torch.clamp(torch.round(xb / scale + zero), 0, levels)
    return ((q - zero) * scale).reshape(rows, k)


def fake_int16_rows(x):
    m = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(m == 0, torch.ones_like(m), m / 32767)
    return torch.round(x / scale) * scale


def fake_weights_per_output(wt, bits, block=None):
    """`wt`: [inputs, outputs]; symmetric per output (and per block of `block` inputs)."""
    top = 2 ** (bits - 1) - 1
    k, n = wt.shape
    block = block or k
    w = wt.reshape(k // block, block, n)
    m = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(m == 0, torch.ones_like(m), m / top)
    return (torch.clamp(torch.round(w / scale), -top, top) * scale).reshape(k, n)


PAIR_STATS = []


def fake_weights_pair_limited(wt, mode):
    """8-bit per output, and no adjacent input pair (k even, k + 1) above |q1| + |q2| = 128, so
    that vpmaddubsw's int16 pair of 0..255 activations cannot saturate: `scale` widens the
    output's step until none is (what the engine does for AVX2: 0.99789 / 98.3% here),
    `clamp` shrinks just the pairs above it in proportion (0.900 / 86.3%)."""
    k, n = wt.shape
    m = wt.abs().amax(dim=0, keepdim=True)
    if mode == "scale":
        pairs = wt.abs().reshape(k // 2, 2, n).sum(dim=1).amax(dim=0, keepdim=True)
        m = torch.maximum(m, pairs * 127 / 128)
    scale = torch.where(m == 0, torch.ones_like(m), m / 127)
    q = torch.clamp(torch.round(wt / scale), -127, 127)
    qp = q.reshape(k // 2, 2, n)
    sums = qp.abs().sum(dim=1, keepdim=True)
    over = sums > 128
    PAIR_STATS.append(over.double().mean().item())
    if mode == "clamp":
        # Both magnitudes shrunk in proportion, then rounded down to fit.
        shrunk = torch.trunc(qp * 128 / sums.clamp(min=128))
        qp = torch.where(over, shrunk, qp)
    return (qp.reshape(k, n) * scale)


def fake_weights_blocks(wt, block=32):
    k, n = wt.shape
    w = wt.reshape(k // block, block, n)
    m = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(m == 0, torch.ones_like(m), m / 127)
    return (torch.clamp(torch.round(w / scale), -127, 127) * scale).reshape(k, n)


def smoothing(w, act_max, alpha):
    """SmoothQuant's per-input scales (as engine::calibration: (act_max / w_max)^alpha, 1 where
    either is 0) and the transposed weights they apply to."""
    wt = w.T.double()
    wmax = wt.abs().amax(dim=1)
    s = (act_max / wmax) ** alpha
    ok = (act_max > 0) & (wmax > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp(1e-4, 1e4), 1.0), wt


class Scheme:
    def __init__(self, args):
        self.args = args
        self.prepared = {}

    def prepare(self, key, make):
        """The quantized weights (and smoothing) of one linear, made once."""
        if key not in self.prepared:
            self.prepared[key] = make()
        return self.prepared[key]

    def fast(self, kind, x, w, b, act_max, layer):
        """An int8-fast layer: smoothing, rotation, 8-bit (or `levels`) rows × int8 weights."""
        a = self.args
        levels = {"qkv": a.levels_qkv, "out": a.levels_out, "up": a.levels_up}[kind] or a.levels
        if a.layers is not None and layer not in a.layers:
            levels = 255
        r = rotation(x.shape[1], a.rotation, a.mix3)

        def make():
            s, wt = smoothing(w, act_max, a.alpha)
            if a.pair_limit:
                return s, fake_weights_pair_limited(r.T @ (s[:, None] * wt), a.pair_limit)
            return s, fake_weights_per_output(r.T @ (s[:, None] * wt), a.weight_bits, a.weight_block)

        s, wq = self.prepare(id(w), make)
        xq = fake_rows((x.double() / s) @ r, levels, a.act_blocks, a.clip)
        return (xq @ wq + b.double()).float()

    def down(self, x, w, b, act_max):
        a = self.args
        if a.down == "f32":
            return x @ w.T + b
        if a.down == "int8":
            wq = self.prepare(id(w), lambda: fake_weights_blocks(w.T.double()))
            xq = fake_int16_rows(x.double())
            return (xq @ wq + b.double()).float()
        # "fast": smoothed, rotated, `--down-levels` steps per row, weights per output.
        return self._down_fast(x, w, b, act_max)

    def _down_fast(self, x, w, b, act_max):
        a = self.args
        r = rotation(x.shape[1], a.rotation, False)

        def make():
            s, wt = smoothing(w, act_max, 0.5)
            if a.pair_limit:
                return s, fake_weights_pair_limited(r.T @ (s[:, None] * wt), a.pair_limit)
            return s, fake_weights_per_output(r.T @ (s[:, None] * wt), a.weight_bits)

        s, wq = self.prepare(id(w), make)
        xq = fake_rows((x.double() / s) @ r, a.down_levels, 1, 1.0)
        return (xq @ wq + b.double()).float()


def load():
    from tokenizers import Tokenizer

    model = bert_model(PACKAGE)

    tok = Tokenizer.from_file(str(PACKAGE / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()
    return model, tok


def install(model, scheme, act_max, record):
    """Replaces each layer's linears by the scheme (or, with `record`, watches their inputs)."""
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        att = layer.attention.self
        parts = {
            "qkv": [att.query, att.key, att.value],
            "out": [layer.attention.output.dense],
            "up": [layer.intermediate.dense],
            "down": [layer.output.dense],
        }
        for kind, linears in parts.items():
            for lin in linears:
                key = (i, kind)

                def forward(x, lin=lin, key=key, kind=kind, i=i):
                    shape = x.shape
                    x2 = x.reshape(-1, shape[-1])
                    if record:
                        m = x2.abs().amax(dim=0).double()
                        act_max[key] = torch.maximum(act_max.get(key, m * 0), m)
                        y = x2 @ lin.weight.T + lin.bias
                    elif kind == "down":
                        y = scheme.down(x2, lin.weight, lin.bias, act_max[key])
                    else:
                        y = scheme.fast(kind, x2, lin.weight, lin.bias, act_max[key], i)
                    return y.reshape(*shape[:-1], -1)

                lin.forward = forward
                hooks.append(lin)
    return hooks


def embed(model, tok, texts):
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t).ids])
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            v = h.mean(dim=0).double()
            out.append((v / v.norm()).numpy())
    return np.array(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=int, default=255, help="activation steps of int8-fast layers")
    p.add_argument("--levels-qkv", type=int, default=None)
    p.add_argument("--levels-out", type=int, default=None)
    p.add_argument("--levels-up", type=int, default=None)
    p.add_argument("--weight-bits", type=int, default=8)
    p.add_argument(
        "--pair-limit",
        choices=["clamp", "scale"],
        default=None,
        help="keep each pair of an output's weights within 128 (AVX2's vpmaddubsw)",
    )
    p.add_argument("--act-blocks", type=int, default=1, help="activation scales per row")
    p.add_argument("--weight-block", type=int, default=None, help="inputs per weight scale")
    p.add_argument("--clip", type=float, default=1.0, help="fraction of each row's range kept")
    p.add_argument("--rotation", type=int, default=128)
    p.add_argument("--mix3", action="store_true", help="mix the blocks of a 3 × 128 row too")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--down", choices=["int8", "f32", "fast"], default="int8")
    p.add_argument("--down-levels", type=int, default=255)
    p.add_argument("--corpus", type=int, default=1000)
    p.add_argument(
        "--layers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="the layers (from 0) `--levels` applies to; the others take 255",
    )
    args = p.parse_args()

    torch.set_num_threads(2)
    model, tok = load()
    ref = json.loads(REFERENCE.read_text())
    corpus = json.loads(CORPUS.read_text())
    corpus = corpus["short"] if isinstance(corpus, dict) else corpus
    corpus = corpus[: args.corpus]

    f32_ref = embed(model, tok, ref["texts"])
    f32_corpus = embed(model, tok, corpus)
    st = np.array(ref["vectors"], dtype=np.float64)
    st /= np.linalg.norm(st, axis=1, keepdims=True)
    base = np.sum(f32_ref * st, axis=1)
    print(f"f32: min cosine vs sentence-transformers {base.min():.6f}")

    act_max = {}
    model2, _ = load()
    install(model2, None, act_max, record=True)
    embed(model2, tok, calibration_texts())
    model3, _ = load()
    install(model3, Scheme(args), act_max, record=False)
    q_ref = embed(model3, tok, ref["texts"])
    cos = np.sum(q_ref * st, axis=1)
    q_corpus = embed(model3, tok, corpus)
    print(
        f"{vars(args)}\n  min cosine {cos.min():.5f} (text {int(cos.argmin())}), "
        f"mean {cos.mean():.6f}; top-10 kept {100 * top_k_agreement(f32_corpus, q_corpus, k=10, every=10):.2f}%"
    )
    if PAIR_STATS:
        print(
            f"  input pairs over |q1| + |q2| = 128: {100 * np.mean(PAIR_STATS):.3f}% of an "
            f"output's on average, {100 * max(PAIR_STATS):.3f}% in the worst linear"
        )


if __name__ == "__main__":
    main()
