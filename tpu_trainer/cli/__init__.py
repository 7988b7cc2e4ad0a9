"""Thin absl entry points: parse flags, call a library function, report errors in one line.

Every tool: `--help` shows what it does, examples and its own flags (exit 0);
`-v` / `--verbosity=1` adds TensorFlow's own logs, hidden by default.
"""
import json
import os
import re
import sys
import time

from tpu_trainer import errors
from tpu_trainer import logs
from tpu_trainer import stopping
from tpu_trainer.errors import Diverged
from tpu_trainer.errors import TryAgain
from tpu_trainer.errors import UserError


_IMPORTED = time.time()  # the first module of ours a tool imports


def process_started() -> float:
  """time.time() when this process started: from Linux's /proc (the interpreter's
  own start-up included), elsewhere when this module was imported."""
  try:
    with open("/proc/self/stat", encoding="ascii") as f:  # field 22: start, in ticks
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime", encoding="ascii") as f:
      uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return _IMPORTED


def _verbose(argv) -> bool:
  for arg in argv[1:]:
    if arg == "-v":
      return True
    for prefix in ("--verbosity=", "-v=", "--v="):
      if arg.startswith(prefix):
        return arg[len(prefix):].lstrip("-").isdigit() and int(arg[len(prefix):]) > 0
  return False


VERBOSE = _verbose(sys.argv)
# Keras takes its backend from the environment when it is first imported (by
# TensorFlow's import, too): --config.backend decides it, tensorflow by default.
from tpu_trainer import backends  # pylint: disable=g-import-not-at-top
backends.select(backends.backend_from_argv(sys.argv) or "tensorflow")
# Before TensorFlow loads: its C++ start-up lines only when asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if VERBOSE else "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top



def print_written(dataset, output_dir: str) -> None:
  """The result line of a conversion: examples and shards per split, as JSON."""
  summary = {name: {"examples": s.num_examples, "shards": len(s.files)}
             for name, s in dataset.splits.items()}
  print(f"Wrote {dataset.name} to {output_dir}: {json.dumps(summary)}")


def expand_path(path: str) -> str:
  """~ and $VARS expanded, as a shell would have (flags like --x=~/data keep them)."""
  return path if not path or path.startswith("gs://") else os.path.expandvars(
      os.path.expanduser(path))


def packaged_recipe(name: str) -> str | None:
  """The path of a recipe shipped in the package (configs/ of the checkout:
  tpu_trainer.configs), by file name, or None."""
  import importlib.resources  # pylint: disable=g-import-not-at-top
  try:
    recipes = str(importlib.resources.files("tpu_trainer.configs"))
  except ModuleNotFoundError:  # run from a checkout's root: configs/ beside the package
    recipes = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "configs")
  name = os.path.basename(name)
  for candidate in (name, name + ".py"):
    if candidate != "__init__.py" and os.path.isfile(os.path.join(recipes, candidate)):
      return os.path.join(recipes, candidate)
  return None


def find_recipes(argv: list[str]) -> list[str]:
  """--config=NAME[:arg] that is no file here names a shipped recipe (cnn, cnn.py,
  configs/cnn.py from another directory): the installed package's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      path, sep, variant = arg[len("--config="):].partition(":")
      if path and not os.path.exists(path) and (found := packaged_recipe(path)):
        out[i] = f"--config={found}{sep}{variant}"
  return out


def define_config_flags(default: str | None = None) -> None:
  """--config (a configs/*.py file[:arg]; any key overridable as --config.KEY=VALUE)
  and --show_config, for the tools that take a training config. Nothing here
  imports TensorFlow: --help, --show_config and flag errors answer at once."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", default, "A configs/*.py file[:arg]; override "
                                  "any key with --config.KEY=VALUE.", lock_config=True)
  flags.DEFINE_bool("show_config", False, "Print every config key of --config with its "
                    "value and meaning, and exit.")


def config_from_flags(flag_values):
  """--config with ~ expanded in data_dir; None after printing it for --show_config."""
  try:
    config = flag_values.config
    if config is not None:
      config.get("data_dir")  # a config file that failed to load raises only on use
  except OSError as e:  # ml_collections reports a config file it could not load lazily
    cause = " ".join(str(e).split()[-8:])
    raise UserError(f"--config could not be loaded ({cause}): pass a config file such as "
                    "configs/cnn.py, or configs/cnn.py:smoke.") from None
  if config is None:
    raise UserError("--config is required, e.g. --config=configs/cnn.py.")
  if "show_config" in flag_values and flag_values.show_config:
    from tpu_trainer import config as config_lib  # pylint: disable=g-import-not-at-top
    print(config_lib.describe(config))
    return None
  with config.unlocked():
    config.data_dir = expand_path(config.data_dir)
    config.model = _model_beside_config(config.model, flag_values)
  import_tensorflow_quietly()  # the tool goes on to use it
  return config


def _model_beside_config(model, flag_values):
  """config.model=FILE.py:FUNCTION with a relative FILE that is not in the working
  directory but beside the --config file (a user's repository): its absolute path."""
  if not isinstance(model, str) or ":" not in model:
    return model
  path, _, function = model.rpartition(":")
  if not path.endswith(".py") or os.path.isabs(path) or os.path.exists(path):
    return model
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_dir = os.path.dirname(os.path.abspath(config_flags.get_config_filename(
      flag_values["config"])))
  beside = os.path.join(config_dir, path)
  return f"{beside}:{function}" if os.path.isfile(beside) else model


def help_text(module) -> str:
  """The tool's docstring (what it does, examples), then its own flags, one line each."""
  lines = [(module.__doc__ or "").strip(), "", "Flags:"]
  own = flags.FLAGS.get_flags_for_module(module.__name__)
  for name in ("config", "show_config"):  # defined for the tool by define_config_flags()
    if name in flags.FLAGS and flags.FLAGS[name] not in own:
      own.append(flags.FLAGS[name])
  for flag in sorted(own, key=lambda f: f.name):
    default = "" if flag.default in (None, "") else f" (default {flag.default_as_str})"
    lines.append(f"  --{flag.name}: {flag.help.splitlines()[0]}{default}")
  lines += ["  -v, --verbosity=1: also TensorFlow's own log lines",
            "  --helpfull: every flag, absl's and TensorFlow's too"]
  return "\n".join(lines)


def import_tensorflow_quietly() -> None:
  """TensorFlow 2.21's native libraries print start-up notices (oneDNN, CPU
  features) straight to fd 2 while it imports, whatever TF_CPP_MIN_LOG_LEVEL
  says; -v shows them. Tools that use TensorFlow call this once their flags
  are parsed, before anything imports it."""
  if VERBOSE or "tensorflow" in sys.modules:
    return
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def run(main, record_stop_signals: bool = False) -> None:
  """app.run(main), with user errors as one 'error: ...' line and exit status 2.

  record_stop_signals: SIGTERM and SIGINT are recorded from here on, for a
  training run to act on at its safe points (save, then exit 143 / 130).

  Exit statuses (every tool; the docs' reference reads this table):
    0          done
    1          a bug (ours, or below us): one line, the traceback with -v; please report it
    2          bad input or settings, a full disk: one error: line saying what to do
    3          training diverged: nothing exported
    75         try again: the workdir's or data_dir's storage stopped answering, a step's
               input stopped coming, a worker was lost or never started; the same command
               resumes
    130 / 143  Ctrl-C / SIGTERM: a checkpoint was saved; the same command resumes
  """
  if record_stop_signals:
    stopping.record_stop_signals()
  module = sys.modules[main.__module__]
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in sys.argv[1:]):
    print(help_text(module))
    sys.exit(0)
  if "-v" in sys.argv:
    sys.argv[sys.argv.index("-v")] = "--verbosity=1"
  sys.argv[:] = find_recipes(sys.argv)

  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    if not VERBOSE:
      logs.use_short_lines()  # our lines, short; TensorFlow's and Keras's chatter hidden
    try:
      return main(argv)
    except stopping.Preempted as e:  # saved; the same command resumes
      sys.stdout.flush()
      print(f"preempted: {e}", file=sys.stderr, flush=True)
      # At once: everything is saved and closed (training's cleanup ran), and the
      # interpreter's teardown (garbage-collecting the JAX runtime, tf.data) took
      # up to 20 s more of a preemption's notice (the MLP on JAX, measured).
      os._exit(128 + e.signum)  # pylint: disable=protected-access
    except Diverged as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(3)
    except TryAgain as e:
      sys.stdout.flush()
      print(f"error: {e}", file=sys.stderr, flush=True)
      # At once: exiting normally flushes TensorFlow's writers, waiting on storage again.
      os._exit(e.exit_status)  # pylint: disable=protected-access
    except UserError as e:  # what the user can fix: one line
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("interrupted (Ctrl-C)", file=sys.stderr)
      sys.exit(130)
    except Exception as e:  # pylint: disable=broad-except
      full = errors.disk_full_path(e)
      if full is not None:
        print(f"error: no space left on the device writing {full}: free some space there, "
              "or write somewhere else.", file=sys.stderr)
        sys.exit(2)
      if VERBOSE:
        raise
      # A bug (ours or below us): summarised; -v shows the traceback to report.
      first = (str(e).strip().splitlines() or [""])[0][:300]
      print(f"error: internal error, a bug to report: {type(e).__name__}: {first} (rerun "
            "with -v for the traceback)", file=sys.stderr)
      sys.exit(1)

  def parse(argv):
    """absl's parsing, with every bad flag or config key as one error line."""
    try:
      return flags.FLAGS(argv)
    except SyntaxError as e:  # the --config file itself
      print(f"error: --config file {e.filename} has a syntax error at line {e.lineno}: "
            f"{e.msg}; fix it, or pass another (e.g. configs/cnn.py).", file=sys.stderr)
      sys.exit(2)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections' messages arrive as a repr inside a repr: unescape them.
      text = str(e).replace("\\n", " ").replace("\\'", "'")
      message = " ".join(text.split())
      if len(message) > 1 and message[0] == message[-1] == "'":
        message = message[1:-1]
      if isinstance(e, AttributeError):  # ml_collections: an override of no such key
        message = f"no such config key {message}"
      if ("Unknown command line flag 'config." in message and "config" in flags.FLAGS
          and not any(a.startswith("--config=") for a in argv)):
        message = ("--config.KEY overrides need a --config to override, e.g. "
                   "--config=configs/cnn.py")
      # ml_collections wraps what the config file raised in its traceback's text.
      wrapped = re.search(r"Error whilst parsing config file: Traceback .* ([\w.]+): (.*)$",
                          message)
      if wrapped:
        kind, what = wrapped.group(1).rsplit(".", 1)[-1], wrapped.group(2)
        message = what if kind == "UserError" else f"the --config file raised {kind}: {what}"
        if kind == "UserError":
          print(f"error: {message}", file=sys.stderr)
          sys.exit(2)
      print(f"error: {message} (see --help)", file=sys.stderr)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except  (the --config file's own code)
      if VERBOSE:
        raise
      first = (str(e).strip().splitlines() or [""])[0][:300]
      print(f"error: the --config file raised {type(e).__name__}{raised_at(e)}: {first}; "
            "fix it (-v shows the traceback), or pass another (e.g. configs/cnn.py).",
            file=sys.stderr)
      sys.exit(2)

  app.run(wrapped, flags_parser=parse)


def raised_at(error: Exception) -> str:
  """' at FILE:LINE' of the deepest frame of the user's own code (not Python's,
  nor an installed package's) in an exception's traceback; '' if none."""
  import sysconfig  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  installed = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith(installed) and not f.filename.startswith("<")
            and os.path.dirname(os.path.abspath(f.filename)) != os.path.dirname(__file__)]
  return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
