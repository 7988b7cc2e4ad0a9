# Sourced by the other scripts: makes sure .venv exists with the package and
# its dependencies (tensorflow-cpu here), reinstalling when setup.py changes.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${TPU_TRAINER_EXTRAS:-cpu,tfds,profile,test}"
stamp="$VENV/.installed-$(cksum < "$REPO/setup.py" | cut -d' ' -f1)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "Setting up $VENV (pip install -e .[$EXTRAS]) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$REPO[$EXTRAS]" >&2
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
cd "$REPO"
