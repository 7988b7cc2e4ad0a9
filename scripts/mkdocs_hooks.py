"""MkDocs hooks (mkdocs.yml): the reference pages' tables are made at every build
from what the code says, so they cannot drift from it. A page asks for one with
a marker line, e.g. `<!-- generated: config-keys -->`."""
import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Console script -> its module in tpu_trainer/cli (setup.py's entry points).
TOOLS = {"tpu-trainer-convert": "convert", "tpu-trainer-train": "train",
         "tpu-trainer-eval": "evaluate", "tpu-trainer-doctor": "doctor",
         "tpu-trainer-benchmark": "benchmark", "tpu-trainer-dryrun": "dryrun",
         "tpu-trainer-data-service": "data_service", "tpu-trainer-launch": "launch"}


def _cell(text) -> str:
  return str(text).replace("|", "\\|")


def config_keys() -> str:
  """Every config key, its default and its meaning (what --show_config prints)."""
  sys.path.insert(0, REPO)
  from tpu_trainer import config  # pylint: disable=g-import-not-at-top
  meaning = config.meanings()
  rows = [f"| `{key}` | `{_cell(repr(value))}` | {_cell(meaning.get(key, ''))} |"
          for key, value in config.flat(config.default_config()).items()]
  return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


def cli_flags() -> str:
  """Every tool's --help, as the tool prints it."""
  out = []
  for tool, module in TOOLS.items():
    result = subprocess.run([sys.executable, "-m", f"tpu_trainer.cli.{module}", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    out += [f"## {tool}", "", "```text", result.stdout.rstrip(), "```", ""]
  return "\n".join(out)


def exit_statuses() -> str:
  """The table in cli.run's docstring."""
  with open(os.path.join(REPO, "tpu_trainer", "cli", "__init__.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  run, = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
  doc = ast.get_docstring(run).split("Exit statuses", 1)[1].splitlines()[1:]
  rows = []
  for line in doc:
    status, _, meaning = line.strip().partition("  ")
    if status and status[0].isdigit():
      rows.append([status, meaning.strip()])
    elif line.strip() and rows:  # a meaning's continuation line
      rows[-1][1] += " " + line.strip()
  return "\n".join(["| status | meaning |", "|---|---|",
                    *(f"| {s} | {_cell(m)} |" for s, m in rows)])


GENERATED = {"config-keys": config_keys, "cli-flags": cli_flags,
             "exit-statuses": exit_statuses}


def on_page_markdown(markdown, page, config, files):  # pylint: disable=unused-argument
  for name, make in GENERATED.items():
    marker = f"<!-- generated: {name} -->"
    if marker in markdown:
      markdown = markdown.replace(marker, make())
  return markdown
