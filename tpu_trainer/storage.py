"""Paths that are local or gs://: listing, reading, atomic publishing, checksums.

Our own reads and writes of gs:// go through google-cloud-storage, which checks
each upload's crc32c, offers generation preconditions (the workdir lock) and
talks to an emulator when STORAGE_EMULATOR_HOST is set. TensorFlow's own GCS
filesystem does the rest (tf.data, checkpoints, summaries, tf.io.gfile).
Local files need no TensorFlow: the converter never imports it (its import is
most of a conversion's time on small datasets).
"""
import base64
import os
import shutil
import sys
import uuid

from absl import logging
import google_crc32c

from tpu_trainer.errors import UserError

_CHUNK = 8 << 20


def is_gcs(path: str) -> bool:
  return path.startswith("gs://")


def join(*parts: str) -> str:
  return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])


def split_gcs(path: str) -> tuple[str, str]:
  """gs://bucket/a/b -> ("bucket", "a/b")."""
  bucket, _, name = path[len("gs://"):].partition("/")
  return bucket, name


def gcs_client():
  """A google-cloud-storage client; anonymous against an emulator."""
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
    return storage.Client(project="emulator", credentials=AnonymousCredentials())
  from google.auth import exceptions  # pylint: disable=g-import-not-at-top
  try:
    return storage.Client()
  except exceptions.DefaultCredentialsError as e:
    raise UserError(f"No credentials for Cloud Storage: {str(e).splitlines()[0][:300]} (run "
                    "`gcloud auth application-default login`).") from None


def file_crc32c(path: str) -> str:
  """crc32c of a local file, base64 as Cloud Storage reports it."""
  crc = google_crc32c.Checksum()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      crc.update(chunk)
  return base64.b64encode(crc.digest()).decode()


def local_temp_path(final_path: str, staging: str | None = None) -> str:
  """Where to write before publishing: beside the file locally (so rename is
  atomic); for gs://, in `staging` (a directory the caller removes whatever
  happens) or the system temp dir."""
  name = f".{os.path.basename(final_path)}.tmp-{uuid.uuid4().hex[:8]}"
  if is_gcs(final_path):
    import tempfile  # pylint: disable=g-import-not-at-top
    return os.path.join(staging or tempfile.gettempdir(), name)
  return os.path.join(os.path.dirname(final_path) or ".", name)


# How long one upload may keep failing (server gone, connection reset) before the
# tool gives up with one line: bounded, and said while it happens.
UPLOAD_DEADLINE_S = 60.0


def transient_errors() -> tuple:
  """What Cloud Storage or the network under it raises while not answering for a
  while (a server error, throttling, a connection refused, reset or timed out):
  worth retrying; still there after the retries, storage is gone."""
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  import requests  # pylint: disable=g-import-not-at-top
  return (exceptions.ServerError, exceptions.TooManyRequests,
          requests.exceptions.ConnectionError, requests.exceptions.Timeout,
          requests.exceptions.ChunkedEncodingError, ConnectionError)


def _upload(local_tmp: str, final_path: str, crc: str, client) -> None:
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  from google.api_core import retry as retries  # pylint: disable=g-import-not-at-top
  import requests  # pylint: disable=g-import-not-at-top

  def say(error):
    logging.warning("Uploading %s failed (%s: %s); retrying for up to %.0f s.", final_path,
                    type(error).__name__, (str(error).splitlines() or [""])[0][:200],
                    UPLOAD_DEADLINE_S)

  bucket_name, name = split_gcs(final_path)
  blob = (client or gcs_client()).bucket(bucket_name).blob(name)
  blob.crc32c = crc  # the server rejects an upload whose bytes do not match
  try:  # the same bytes under the same name: an upload may safely be repeated
    blob.upload_from_filename(local_tmp, checksum="crc32c", timeout=30, retry=retries.Retry(
        retries.if_exception_type(*transient_errors()),
        initial=1.0, maximum=10.0, timeout=UPLOAD_DEADLINE_S, on_error=say))
  except (exceptions.RetryError, exceptions.ServerError, requests.exceptions.RequestException,
          exceptions.Forbidden, exceptions.Unauthorized) as e:
    cause = e.cause if isinstance(e, exceptions.RetryError) and e.cause else e
    raise UserError(f"Cannot write {final_path}: {type(cause).__name__}: "
                    f"{(str(cause).splitlines() or [''])[0][:200]}. Run the same command "
                    "again when storage is back: what was written whole is kept.") from None


def publish(local_tmp: str, final_path: str, client=None) -> str:
  """Makes a finished local temp file visible at final_path, whole or not at all.

  Returns its crc32c. For gs:// the upload is checked against that crc32c by
  the server, and an object only becomes visible when its upload completes.
  """
  try:
    crc = file_crc32c(local_tmp)
    if is_gcs(final_path):
      _upload(local_tmp, final_path, crc, client)
    else:
      os.replace(local_tmp, final_path)
  finally:  # interrupted or not, no temp file stays behind
    if os.path.exists(local_tmp):
      os.remove(local_tmp)
  return crc


def publish_copy(local_path: str, final_path: str, client=None) -> str:
  """publish() for a file that stays where it is (on another disk, say)."""
  tmp = local_temp_path(final_path)
  try:
    shutil.copyfile(local_path, tmp)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return publish(tmp, final_path, client)


def remote_crc32c(path: str, client=None) -> str | None:
  """crc32c of an existing file or object, None when it does not exist."""
  if is_gcs(path):
    bucket_name, name = split_gcs(path)
    blob = (client or gcs_client()).bucket(bucket_name).get_blob(name)
    return blob.crc32c if blob is not None else None
  return file_crc32c(path) if os.path.exists(path) else None


def write_text(path: str, text: str, client=None) -> None:
  """Writes a small text file atomically (temp file, then publish)."""
  if not is_gcs(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = local_temp_path(path)
  with open(tmp, "w") as f:
    f.write(text)
  publish(tmp, path, client)


def read_text(path: str, client=None) -> str:
  """A small text file: metadata, configs. Fails within about a minute, never
  retrying for long, when a bucket cannot be reached."""
  if is_gcs(path):
    from google.cloud.storage.retry import DEFAULT_RETRY  # pylint: disable=g-import-not-at-top
    bucket_name, name = split_gcs(path)
    try:
      return (client or gcs_client()).bucket(bucket_name).blob(name).download_as_text(
          timeout=20, retry=DEFAULT_RETRY.with_deadline(30))
    except Exception as e:  # pylint: disable=broad-except
      if is_not_found(e) or isinstance(e, UserError):  # no credentials: said already
        raise
      raise access_error(path, e) from None
  with open(path) as f:
    return f.read()


def read_text_if_exists(path: str, client=None) -> str | None:
  """read_text, or None for a file or object that is not there."""
  try:
    return read_text(path, client)
  except Exception as e:  # pylint: disable=broad-except
    if is_not_found(e):
      return None
    raise


def bucket_exists(bucket_name: str, client=None) -> tuple[object, bool]:
  """(the client, whether the bucket exists), asked once with a short timeout: an
  unreachable bucket (credentials, network) is an error in seconds, not minutes of
  retries. Without a client, one is made (no credentials: gcs_client's error)."""
  client = client or gcs_client()
  try:
    return client, client.bucket(bucket_name).exists(timeout=15, retry=None)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Cannot reach bucket gs://{bucket_name}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0]} (run `gcloud auth application-default "
                    "login` or check the bucket name).") from None


def require_bucket(path: str, client=None):
  """The client, once gs://BUCKET of `path` is known to exist (asked once, in
  seconds); a missing bucket is a UserError saying how to create it."""
  bucket_name, _ = split_gcs(path)
  client, exists = bucket_exists(bucket_name, client)
  if not exists:
    raise UserError(f"Bucket gs://{bucket_name} (of {path}) does not exist; create it "
                    f"(gcloud storage buckets create gs://{bucket_name} --location=REGION), "
                    "or fix the path.")
  return client


def access_error(path: str, error: Exception) -> ValueError:
  """One line for a gs:// path that cannot be reached: credentials, permissions,
  network."""
  bucket, _ = split_gcs(path)
  return UserError(f"Cannot read {path}: {type(error).__name__}: "
                   f"{(str(error).splitlines() or [''])[0][:300]} (run `gcloud auth "
                   f"application-default login`, or check that gs://{bucket} exists and "
                   "that you may read it).")


def list_files(directory: str, client=None, fail_fast: bool = False) -> dict:
  """{file name: (bytes, crc32c)} of the files directly in a local dir or gs:// prefix.

  fail_fast: no retries and short timeouts, for preflight checks.
  """
  if is_gcs(directory):
    bucket_name, prefix = split_gcs(directory.rstrip("/") + "/")
    kwargs = {"timeout": 15, "retry": None} if fail_fast else {}
    blobs = (client or gcs_client()).list_blobs(bucket_name, prefix=prefix, delimiter="/",
                                                **kwargs)
    return {b.name[len(prefix):]: (b.size, b.crc32c) for b in blobs}
  return {name: (os.path.getsize(os.path.join(directory, name)),
                 file_crc32c(os.path.join(directory, name)))
          for name in os.listdir(directory)
          if os.path.isfile(os.path.join(directory, name))}


def open_read(path: str, client=None):
  """A binary file object streaming a local file or a gs:// object."""
  if is_gcs(path):
    bucket_name, name = split_gcs(path)
    return (client or gcs_client()).bucket(bucket_name).blob(name).open(
        "rb", chunk_size=_CHUNK)
  return open(path, "rb", buffering=_CHUNK)


def list_sizes(directory: str, client=None) -> dict:
  """{file name: bytes} of the files directly in a local dir or gs:// prefix: one
  listing, nothing read."""
  return {name: stamp["num_bytes"] for name, stamp in list_stamps(directory, client).items()}


def list_stamps(directory: str, client=None) -> dict:
  """{file name: {"num_bytes", and "crc32c" (gs://) or "mtime_ns" (local)}} of the
  files directly in a directory: what one listing tells of each, nothing read."""
  if is_gcs(directory):
    return {name: {"num_bytes": size, "crc32c": crc}
            for name, (size, crc) in list_files(directory, client).items()}
  if not os.path.isdir(directory):
    return {}
  return {e.name: {"num_bytes": e.stat().st_size, "mtime_ns": e.stat().st_mtime_ns}
          for e in os.scandir(directory) if e.is_file()}


def is_not_found(error: Exception) -> bool:
  """A missing file or object, whichever library reported it."""
  if isinstance(error, FileNotFoundError):
    return True
  api_core = sys.modules.get("google.api_core.exceptions")  # loaded by any gs:// call
  if api_core is not None and isinstance(error, api_core.NotFound):
    return True
  tf = sys.modules.get("tensorflow")  # only TensorFlow's own reads raise its errors
  return tf is not None and isinstance(error, tf.errors.NotFoundError)


def delete(path: str, client=None) -> None:
  if is_gcs(path):
    bucket_name, name = split_gcs(path)
    (client or gcs_client()).bucket(bucket_name).blob(name).delete()
  else:
    os.remove(path)
