"""The evaluation's metrics, declared once, and the reports they drive.

`METRICS` is the one table of the metrics a method is summarised by: its key in
results/metrics.json, a title for people, whether higher is better, its number format, and which
reports show it (the markdown table of `relic evaluate`, its bar plot, the comparison table of
`relic sweep`). `markdown_table` and `plots` write `relic evaluate`'s reports from it;
relic_jax/sweep.py reads it for its comparison.
"""

import io
import os
from typing import NamedTuple

import numpy as np

from relic_jax.io_utils import write_bytes_atomic


class Metric(NamedTuple):
  key: str                 # the key in results/metrics.json (method -> key -> value)
  title: str               # for people: column and axis titles
  higher: bool             # True: higher is better
  fmt: str                 # format spec in the evaluation's markdown table
  table: bool = True       # a column of the evaluation's markdown table (metrics.md)
  plot: bool = False       # a panel of the evaluation's bar plot (plots/metrics.png)
  sweep: bool = False      # a column of the sweep's comparison table
  sweep_fmt: str = ""      # format spec in the sweep's table, where it differs from fmt
  per_script: bool = True  # a column of the per-script tables (metrics.md; details.json has all)


# In report order: metrics.json summarises every row (and details.json per script), each report
# shows the rows it marks. late_*: at revisits to views first seen after frame 0
# (evaluation/revisits.py), the memory's own test; consistency_*: only where the generated
# video left the view in between; rpe_trans: only on scripts with translation.
METRICS = (
    Metric("late_revisit_psnr", "late revisit PSNR (dB)", True, ".2f", plot=True, sweep=True),
    Metric("late_revisit_ssim", "late revisit SSIM", True, ".3f", sweep=True),
    Metric("late_consistency_psnr", "late consistency PSNR (dB)", True, ".2f", plot=True),
    Metric("revisit_psnr", "revisit PSNR (dB)", True, ".2f", plot=True, sweep=True),
    Metric("revisit_ssim", "revisit SSIM", True, ".3f", sweep=True),
    Metric("consistency_psnr", "consistency PSNR (dB)", True, ".2f", plot=True),
    Metric("rpe_trans", "RPE trans", False, ".3f", plot=True, sweep=True),
    Metric("rpe_rot", "RPE rot (deg)", False, ".2f", plot=True, sweep=True),
    Metric("psnr", "PSNR (dB)", True, ".2f"),
    Metric("psnr_last_10s", "PSNR, last 10 s (dB)", True, ".2f", per_script=False),
    Metric("fps", "frames/s", True, ".2f", sweep=True, sweep_fmt=".1f", per_script=False),
    Metric("block_latency_ms", "block latency (ms)", False, ".2f", table=False,
           per_script=False),
)
BY_KEY = {m.key: m for m in METRICS}
SUMMARY_KEYS = tuple(m.key for m in METRICS)  # a method's summary in results/metrics.json


def markdown_table(summary: dict, per_script: bool = False) -> str:
  """method -> metrics as a markdown table of the METRICS marked `table` (and `per_script`
  when per_script; '-': no value)."""
  cols = [m for m in METRICS if m.table and (m.per_script or not per_script)]
  lines = ["| method | " + " | ".join(m.key for m in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for method, row in summary.items():
    cells = ["-" if row.get(m.key) is None else format(row[m.key], m.fmt) for m in cols]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def markdown(summary: dict, groups: dict, meta: dict, notes: str, group: str = "script") -> str:
  """The whole metrics.md: where the student's weights come from (a loud warning when they are
  not distilled), the averages over all cases, the notes, then one table per group of cases
  (`group`: "script" for the Doom truth, "episode" for recorded episodes)."""
  out = ["# Evaluation\n"]
  if meta.get("warning"):
    out.append(f"> **WARNING: {meta['warning']}**\n")
  out.append(f"Student weights: `{meta.get('weights_from')}`"
             f"{' (distilled)' if meta.get('distilled') else ''}.\n")
  out.append(f"## All {group}s (mean over cases)\n")
  out.append(markdown_table(summary))
  out.append(notes)
  for name, table in groups.items():
    out.append(f"## {name}\n" if group == "script" else f"## {group} {name}\n")
    out.append(markdown_table(table, per_script=True))
  return "\n".join(out)


def plots(results_dir: str, details: dict, summary: dict) -> list[str]:
  """<results_dir>/plots: stability_psnr.png (per-second PSNR of the longest case's group, its
  script or recorded episode, averaged over its cases; only when it has cases of 20 s or more,
  which have the curves) and metrics.png (a bar panel per METRICS row marked `plot` that has a
  value). Returns the paths written."""
  # matplotlib: a heavy optional dependency (slow to import), imported when a report is drawn
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  out_dir = os.path.join(results_dir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  paths = []

  def save(fig, name):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = os.path.join(out_dir, name)
    write_bytes_atomic(path, buf.getvalue())
    paths.append(path)

  longest = max(details["cases"].values(), key=lambda c: c["frames"], default=None)
  group = longest["group"] if longest is not None else None
  curves = {}  # method -> the mean per-second PSNR over the group's cases that have one
  for method in summary:
    per_case = [c["methods"][method]["psnr_per_second"] for c in details["cases"].values()
                if c["group"] == group and "psnr_per_second" in c["methods"].get(method, {})]
    if per_case:
      n = min(len(c) for c in per_case)
      curves[method] = np.mean([c[:n] for c in per_case], 0)
  if curves:  # only cases of LONG_SCRIPT_S and more have the curves: no empty plot
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for method, curve in curves.items():
      ax.plot(np.arange(len(curve)) + 0.5, curve, label=method)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("PSNR vs truth (dB)")
    ax.set_title(f"stability: {group}")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "stability_psnr.png")
  keys = [m.key for m in METRICS
          if m.plot and any(summary[method].get(m.key) is not None for method in summary)]
  if keys:
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(np.atleast_1d(axes), keys):
      names = [method for method in summary if summary[method].get(k) is not None]
      ax.bar(names, [summary[method][k] for method in names], color="tab:blue")
      ax.set_title(k)
      ax.tick_params(axis="x", rotation=45)
    save(fig, "metrics.png")
  return paths
