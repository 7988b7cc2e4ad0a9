# Sourced by the other scripts: makes sure .venv exists with the package and
# its dependencies (tensorflow-cpu here), reinstalling when setup.py changes,
# and puts it first on PATH. It leaves the working directory alone.
#
# TPU_TRAINER_STACK=oldest uses .venv-oldest instead: the oldest TensorFlow and
# Keras we support (TensorFlow 2.16.1, as on the tpu-vm-tf-2.16.1 runtimes, and
# Keras 3.6), installed the way a TPU VM gets the package: the image's
# TensorFlow first, then scripts/install_on_image.sh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
STACK="${TPU_TRAINER_STACK:-newest}"
case "$STACK" in
  newest) VENV="${VENV:-$REPO/.venv}"; EXTRAS="${TPU_TRAINER_EXTRAS:-cpu,jax,profile,beam,test,docs}" ;;
  oldest) VENV="${VENV:-$REPO/.venv-oldest}"; EXTRAS="${TPU_TRAINER_EXTRAS:-test}"
          OLDEST_TF="tensorflow-cpu==2.16.1" OLDEST_KERAS="keras==3.6.0" ;;
  *) echo "error: TPU_TRAINER_STACK=$STACK: use newest or oldest." >&2; exit 2 ;;
esac
stamp="$VENV/.installed-$(cat "$REPO/setup.py" "$REPO/scripts/install_on_image.sh" | cksum | cut -d' ' -f1)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "Setting up $VENV ($STACK stack, extras [$EXTRAS]) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  if [ "$STACK" = oldest ]; then
    "$VENV/bin/python" -m pip install -q "$OLDEST_TF" >&2
    PYTHON="$VENV/bin/python" EXTRAS="$EXTRAS" bash "$REPO/scripts/install_on_image.sh" "$OLDEST_KERAS" >&2
  else
    "$VENV/bin/python" -m pip install -q -e "$REPO[$EXTRAS]" >&2
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
# No cd: paths the user passes stay relative to where they ran the script.
