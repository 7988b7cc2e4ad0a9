"""The docs site (docs/, mkdocs.yml) and the README: the site builds with `mkdocs build --strict` (a
broken link or anchor, or a page left out of the navigation, fails it), its
reference pages are made from the code, and every block marked `<!-- run -->`
runs as written: a page's blocks in order in one shell, from the repository's
root, with /tmp/ swapped for the test's own directory and gs://BUCKET for a
bucket on the GCS emulator; kubectl and gcloud are fakes that record their
calls (the tests of the launchers check those calls)."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import uuid

import pytest

from conftest import REPO
from conftest import fake_cloud

DOCS = pathlib.Path(REPO) / "docs"
RUNNABLE = re.compile(r"^([ \t]*)<!-- run -->\n[ \t]*```(sh|python)\n(.*?)^[ \t]*```",
                      re.MULTILINE | re.DOTALL)


def runnable_blocks(page: pathlib.Path) -> list[tuple[str, str]]:
  """(language, code) of each block marked runnable, in the page's order."""
  return [(language, textwrap.dedent(code))
          for _, language, code in RUNNABLE.findall(page.read_text())]


def _as_shell(language: str, code: str) -> str:
  return code if language == "sh" else f"python - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK\n"


PAGES = sorted(p.relative_to(REPO).as_posix()
               for p in [pathlib.Path(REPO) / "README.md", *DOCS.rglob("*.md")]
               if runnable_blocks(p))


def test_the_docs_build_strict_with_the_reference_made_from_the_code(tmp_path):
  site = tmp_path / "site"
  result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert result.returncode == 0, result.stderr[-3000:]
  from tpu_trainer import config  # pylint: disable=g-import-not-at-top
  keys = (site / "reference" / "config" / "index.html").read_text()
  for key in config.flat(config.default_config()):
    assert f"<code>{key}</code>" in keys, key
  flags = (site / "reference" / "cli" / "index.html").read_text()
  assert "--output_dir: Local directory or gs://bucket/prefix." in flags
  assert "--platform:" in flags and "--workdir:" in flags
  statuses = (site / "reference" / "exit-status" / "index.html").read_text()
  for status in ("0", "1", "2", "3", "75", "130 / 143"):
    assert f"<td>{status}</td>" in statuses, status
  assert not re.search(r"&lt;!-- generated: [\w-]+ --&gt;|<!-- generated", keys + flags + statuses)


def test_the_guides_hold_runnable_blocks():
  """The pages a new user starts from each hold commands this suite runs."""
  for page in ("README.md", "docs/guides/convert.md", "docs/guides/train.md",
               "docs/guides/own-model.md", "docs/guides/resume.md", "docs/guides/backends.md",
               "docs/guides/gke.md", "docs/guides/cloud-tpu.md",
               "docs/guides/own-tfrecords.md"):
    assert page in PAGES, page


@pytest.mark.parametrize("page", PAGES)
def test_a_pages_runnable_blocks_run_as_written(page, tmp_path, request, monkeypatch):
  cloud = fake_cloud(tmp_path)
  work = tmp_path / "tmp"
  work.mkdir()
  script = "set -euo pipefail\n" + "\n".join(
      _as_shell(language, code) for language, code in runnable_blocks(pathlib.Path(REPO) / page))
  script = script.replace("/tmp/", f"{work}/")
  if "gs://BUCKET" in script:  # a bucket of its own on the emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs_emulator").url)
    from tpu_trainer import storage  # pylint: disable=g-import-not-at-top
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    storage.gcs_client().create_bucket(bucket)
    script = script.replace("gs://BUCKET", f"gs://{bucket}")
  env = {**os.environ, **cloud, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PATH": f"{os.path.dirname(sys.executable)}:{cloud['PATH']}"}
  result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
  assert result.returncode == 0, f"{page}:\n{script}\n{result.stderr[-4000:]}"
  assert "Traceback" not in result.stderr, result.stderr[-4000:]


def test_the_readmes_links_lead_to_pages_of_the_site():
  readme = (pathlib.Path(REPO) / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
  assert len(links) >= 10
  for link in links:
    assert not link.startswith("http") and (pathlib.Path(REPO) / link).is_file(), link
    assert link.startswith("docs/") and link.endswith(".md"), link
