#!/usr/bin/env bash
# Installs this package into a Python that already has TensorFlow (a Cloud TPU
# VM image, a GPU container) without replacing that TensorFlow or what it pins:
# the image's tensorflow*, protobuf, numpy, ml-dtypes and tensorboard versions
# are pip constraints. Keras is upgraded when it is older than setup.py asks.
#   scripts/install_on_image.sh [PIP_ARGS...]     e.g. 'keras==3.6.0'
# PYTHON (default python3) and EXTRAS (e.g. test) come from the environment.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
keep="$(mktemp)"
trap 'rm -f "$keep"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null |
  grep -iE '^(tensorflow(-cpu|-tpu)?|tf-nightly[a-z_-]*|protobuf|numpy|ml[-_]dtypes|tensorboard)==' > "$keep" || true
if ! grep -qiE '^(tensorflow|tf-nightly)' "$keep"; then
  echo "error: $PYTHON has no TensorFlow; install one first, or use pip install -e '.[cpu]'." >&2
  exit 2
fi
# tensorflow-metadata 1.21 (pulled in by tensorflow-datasets) says it works with
# protobuf 4.25 but imports protobuf 5's runtime_version; 1.17 is the last that works.
grep -qiE '^protobuf==[34][.]' "$keep" && echo "tensorflow-metadata<1.18" >> "$keep"
echo "Keeping the installed $(tr '\n' ' ' < "$keep")" >&2
"$PYTHON" -m pip install -q -c "$keep" -e "$REPO${EXTRAS:+[$EXTRAS]}" "$@"
