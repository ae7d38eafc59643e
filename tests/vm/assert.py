#!/usr/bin/env python3
"""Host-side assertions on what the VM test brought back (tests/vm/run calls this).

usage: assert.py OUT_DIR HOST_EMBEDDINGS REFERENCE_JSON MODE

OUT_DIR holds the guest's results.jsonl and artefacts. Every check the guest recorded must be
ok; on top of that the host compares the guest's vectors with the host daemon's (cosine >=
0.99999, the same binary and package on another CPU model) and with the sentence-transformers
reference (cosine >= 0.9999, the bar of tests/fidelity.rs). Prints one line per check and
'N passed, N failed'; exits 1 on any failure.
"""

import json
import math
import os
import sys

EXPECTED = {
    "full": ["install", "embeddings", "journal", "reload", "sideload", "fallback", "repo",
             "metrics", "api-socket", "memory", "watchdog", "upgrade", "purge"],
    "reduced": ["install", "embeddings", "journal", "reload", "sideload", "fallback", "repo",
                "metrics", "api-socket", "upgrade", "purge"],
}


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def vectors(path):
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    return [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]


def main():
    out, host_embeddings, reference, mode = sys.argv[1:5]
    results = []
    path = os.path.join(out, "results.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            results = [json.loads(line) for line in f if line.strip()]
    outcomes = []  # (name, ok, detail)
    seen = {r["name"]: r for r in results}
    for name in EXPECTED[mode]:
        r = seen.get(name)
        if r is None:
            outcomes.append((name, False, "no result from the guest"))
        else:
            detail = r["detail"].strip().splitlines()
            outcomes.append((name, r["ok"], f"{r['seconds']} s; " + (detail[-1] if detail else "")
                             if r["ok"] else f"{r['seconds']} s\n" + r["detail"]))

    guest_file = os.path.join(out, "embeddings.json")
    if seen.get("embeddings", {}).get("ok") and os.path.exists(guest_file):
        guest = vectors(guest_file)
        host = vectors(host_embeddings)
        with open(reference, encoding="utf-8") as f:
            ref = json.load(f)["vectors"]
        ok = len(guest) == len(host) > 0
        worst_host = min((cosine(g, h) for g, h in zip(guest, host)), default=0.0)
        worst_ref = min((cosine(g, r) for g, r in zip(guest, ref)), default=0.0)
        outcomes.append(("vectors-match-host", ok and worst_host >= 0.99999,
                         f"{len(guest)} texts, min cosine guest vs host daemon {worst_host:.7f}"))
        outcomes.append(("vectors-match-reference", ok and worst_ref >= 0.9999,
                         f"min cosine guest vs sentence-transformers {worst_ref:.7f}"))
    else:
        outcomes.append(("vectors-match-host", False, "no guest embeddings"))

    side = os.path.join(out, "sideload.json")
    side_default = os.path.join(out, "sideload-default.json")
    if seen.get("sideload", {}).get("ok") and os.path.exists(side):
        c = cosine(vectors(side)[0], vectors(side_default)[0])
        outcomes.append(("sideload-same-weights", c >= 0.99999,
                         f"side-loaded copy vs bundled model, cosine {c:.7f}"))

    if not os.path.exists(os.path.join(out, "done")):
        outcomes.append(("guest-finished", False, "the guest did not reach the end of its checks"))

    passed = sum(1 for _, ok, _ in outcomes if ok)
    failed = len(outcomes) - passed
    for name, ok, detail in outcomes:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
