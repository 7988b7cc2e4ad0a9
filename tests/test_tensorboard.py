"""scripts/tensorboard.sh serves a workdir's training and validation scalars."""
import json
import os
import socket
import subprocess
import time
import urllib.request

import tensorflow as tf

from configs import mlp as mlp_config
from conftest import REPO
from tpu_trainer import training


def test_tensorboard_script_serves_the_scalars(digits_dir, tmp_path):
  workdir = str(tmp_path / "w")
  config = mlp_config.get_config()
  config.update({"data_dir": digits_dir, "batch_size": 64, "steps": 30,
                 "steps_per_execution": 5, "profile_steps": "10,20"})
  training.run(config, workdir, tf.distribute.get_strategy())

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = open(tmp_path / "tb.log", "w")
  # A relative path, from the caller's directory, not the repo's.
  proc = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "tensorboard.sh"), "w",
                           str(port)], stdout=log, stderr=log, cwd=tmp_path)
  try:
    deadline, tags = time.time() + 90, None
    while time.time() < deadline:
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags",
                                    timeout=5) as response:
          tags = json.load(response)
        if "train" in tags and "validation" in tags:
          break
      except OSError:
        pass
      assert proc.poll() is None, (tmp_path / "tb.log").read_text()[-2000:]
      time.sleep(0.5)
    assert tags and {"epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                     "examples_per_second"} == set(tags["train"]), tags
    assert {"epoch_loss", "epoch_accuracy"} == set(tags["validation"])
    # The profile plugin (xprof) is there, with the run's profile.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing",
                                timeout=10) as response:
      plugins = json.load(response)
    assert plugins.get("profile", {}).get("enabled"), plugins.get("profile")
  finally:
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
