"""Progress as a person sees it: a live tqdm bar on a terminal (a real pseudo-
terminal here), periodic lines with ETA elsewhere (tests/test_dryrun.py)."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import REPO


def _on_a_terminal(*args):
  """Runs a CLI with stderr on a pseudo-terminal; returns what the terminal got."""
  leader, follower = pty.openpty()
  # A terminal 120 columns wide (a bare pseudo-terminal has none: tqdm draws nothing).
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
  proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=follower, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  os.close(follower)
  seen = b""
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:  # the other side closed
      break
    if not chunk:
      break
    seen += chunk
  os.close(leader)
  assert proc.wait(timeout=300) == 0, seen.decode(errors="replace")[-3000:]
  return seen.decode(errors="replace")


def test_conversion_and_training_draw_a_live_bar_on_a_terminal(tmp_path):
  data = str(tmp_path / "d")
  seen = _on_a_terminal("tpu_trainer.cli.convert", "--source=digits", f"--output_dir={data}")
  # (A terminal shows every \n as \r\n: the bar's own redraws are \r not before \n.)
  redraws = seen.replace("\r\n", "\n").count("\r")
  assert redraws >= 1 and "1797/1797" in seen and "examples/s" in seen, seen

  seen = _on_a_terminal("tpu_trainer.cli.train", "--config=configs/mlp.py",
                        f"--config.data_dir={data}", f"--workdir={tmp_path / 'w'}",
                        "--config.steps=60", "--config.steps_per_execution=10",
                        "--config.log_every_steps=30")
  assert seen.replace("\r\n", "\n").count("\r") >= 2 and "60/60" in seen, seen
  assert "step/s" in seen or "s/step" in seen  # tqdm's own rate
  # Our log lines still print, above the bar.
  assert "step 30/60 (50%)" in seen and "ETA" in seen
