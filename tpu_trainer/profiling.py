"""What a profile says, in one line and profile_summary.json beside the trace.

Read with xprof's own converter (the `profile` extra), so the numbers are the
ones TensorBoard's profile tab shows: the input-pipeline analyzer's step table
(step time, and the part of it spent waiting for input) and the framework op
stats (where host and device time went). A "step" here is one execution: the
`steps_per_execution` optimizer steps between two step markers, named by the
first of them.
"""
import json
import os
import re
import tempfile

from absl import logging
import tensorflow as tf

SUMMARY_FILE = "profile_summary.json"
TOP_OPS = 5
# While profiled, each step of an execution is laid out in the graph on its own
# (loop.py), under its own copy of the model's name scope: cnn_1/..., cnn_3/...,
# gradient_tape/cnn_19/... The scope's number is the step's, not the op's.
STEP_SCOPE = re.compile(r"^((?:gradient_tape/)?[^/]+?)_\d+(?=/)")


def latest_trace(logdir: str) -> str | None:
  """The newest *.xplane.pb under logdir/plugins/profile/RUN/."""
  found = tf.io.gfile.glob(f"{logdir.rstrip('/')}/plugins/profile/*/*.xplane.pb")
  return max(found) if found else None  # run directories are named by their time


def summarize(trace: str) -> dict | None:
  """The profile's verdict, or None without xprof (said in the log)."""
  try:
    from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("No profile summary: xprof is not installed (pip install -e "
                    "'.[profile]'); the trace is in %s.", trace)
    return None
  with tempfile.TemporaryDirectory(prefix="tpu_trainer_profile_") as local:
    path = os.path.join(local, os.path.basename(trace))
    tf.io.gfile.copy(trace, path)  # the converter reads local files; the trace may be on gs://

    def tool(name):
      data, _ = raw_to_tool_data.xspace_to_tool_data([path], name, {})
      return json.loads(data)

    steps = _steps(tool("input_pipeline_analyzer"))
    ops = _op_rows(tool("framework_op_stats"))
  total = sum(s["step_ms"] for s in steps)
  waiting = sum(s["input_ms"] for s in steps)
  # tf.data's own ops (type Dataset) run beside the step, on other threads: the
  # step's op time is the rest; the input's is said as its share of host op time.
  step_ops = [r for r in ops if r["type"] != "Dataset"]
  host = sum(r["self_us"] for r in ops if r["where"] == "Host")
  dataset = sum(r["self_us"] for r in ops if r["type"] == "Dataset")
  return {
      "trace": trace,
      "steps": len(steps),
      "step_ms_average": round(total / len(steps), 3) if steps else None,
      "input_share": round(waiting / total, 4) if total else None,
      "top_op_types": _top(step_ops, "type"),
      "top_ops": _top(step_ops, "op", "type"),
      "dataset_ops_share_of_host": round(dataset / host, 4) if host else None,
      "per_step": steps,
  }


def _steps(analysis: list) -> list[dict]:
  """Rows of the input-pipeline analyzer's step-time table."""
  table = next((t for t in analysis if isinstance(t, dict) and
                any(c.get("id") == "stepTimeMs" for c in t.get("cols", []))), None)
  if table is None:
    return []
  ids = [c["id"] for c in table["cols"]]
  rows = [dict(zip(ids, (cell.get("v") for cell in row["c"]))) for row in table["rows"]]
  return [{"step": r["stepnum"], "step_ms": float(r["stepTimeMs"]),
           "input_ms": float(r["infeedTimeMs"]),
           "compute_ms": float(r["hostComputeTimeMs"]) + float(r["deviceComputeTimeMs"])}
          for r in rows]


def _op_rows(stats: list) -> list[dict]:
  """The framework op stats' rows (idle time left out), each op named without
  its step's scope, so that one op's time over the profiled steps adds up."""
  table = stats[0]
  ids = [c["id"] for c in table["cols"]]
  rows = [dict(zip(ids, (cell.get("v") for cell in row["c"]))) for row in table["rows"]]
  return [{"op": STEP_SCOPE.sub(r"\1", r["operation"]), "type": r["type"],
           "where": r["host_or_device"], "self_us": r["total_self_time"]}
          for r in rows if r["type"] != "IDLE"]


def _top(rows: list[dict], *keys: str) -> list[dict]:
  """The TOP_OPS groups of rows (by `keys`, and host or device) with the most self
  time, with their share of the rows' time on their side."""
  totals, groups = {}, {}
  for r in rows:
    totals[r["where"]] = totals.get(r["where"], 0.0) + r["self_us"]
    group = (*(r[k] for k in keys), r["where"])
    groups[group] = groups.get(group, 0.0) + r["self_us"]
  ranked = sorted(groups.items(), key=lambda item: item[1], reverse=True)
  return [{**dict(zip(keys, group[:-1])), "where": group[-1], "self_ms": round(us / 1e3, 3),
           "share": round(us / totals[group[-1]], 4)}
          for group, us in ranked[:TOP_OPS] if totals[group[-1]]]


def describe(summary: dict) -> str:
  """One line: the average step, the share waiting for input, the top ops."""
  if not summary["steps"]:
    return (f"Profile: no step found in the trace ({summary['trace']}); TensorBoard's "
            "trace viewer still has it.")
  types = ", ".join(f"{o['type']} {o['share']:.0%}" for o in summary["top_op_types"][:3])
  ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in summary["top_ops"][:2])
  return (f"Profile: {summary['steps']} step(s) (executions), {summary['step_ms_average']:.1f} "
          f"ms each on average, {summary['input_share']:.0%} of it waiting for input"
          + (f"; most of the step's op time in {types} (by op type); top ops {ops}"
             if types else "")
          + (f"; tf.data's own ops {summary['dataset_ops_share_of_host']:.0%} of host op time"
             if summary["dataset_ops_share_of_host"] else "")
          + f". Details: {SUMMARY_FILE} beside the trace.")


def write_summary(logdir: str) -> dict | None:
  """After a profile: summarize the newest trace, log the line, and write the
  summary beside the trace. None when there is no trace or no xprof."""
  trace = latest_trace(logdir)
  if trace is None:
    logging.warning("No profile trace under %s/plugins/profile.", logdir)
    return None
  summary = summarize(trace)
  if summary is not None:
    with tf.io.gfile.GFile(f"{trace.rsplit('/', 1)[0]}/{SUMMARY_FILE}", "w") as f:
      f.write(json.dumps(summary, indent=1) + "\n")
    logging.info(describe(summary))
  return summary
