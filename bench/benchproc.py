"""Running one benchmark process, reading its result line, and the numbers
and cells of the report: shared by bench/runner.py, bench/programs.py and
bench/gc/gcrunner.py."""

import os
import statistics
import subprocess
import sys


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_line(text):
    """The last line of key=value pairs that a workload printed."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("workload="):
            return dict(item.partition("=")[::2] for item in line.split())
    return None


def child_env(preload):
    """The environment for a run, with LD_PRELOAD set to preload (or unset)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    return env


def run_checked(cmd, preload, timeout):
    """Run cmd; return (result dict, None), or (None, why it failed): a
    timeout, a non-zero exit, a failed self-check, no result line."""
    try:
        p = subprocess.run(cmd, env=child_env(preload), capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout (%.0f s)" % timeout
    res = parse_line(p.stdout)
    tail = " ".join(p.stderr.strip().splitlines()[-2:])
    if p.returncode != 0:
        why = "exit %d" % p.returncode if p.returncode > 0 else \
              "signal %d" % -p.returncode
        if res is not None and res.get("ok") == "0":
            why = "verification failed (bad=%s)" % res.get("bad")
        return None, why + (": " + tail if tail else "")
    if res is None or res.get("ok") != "1":
        return None, "no result line" + (": " + tail if tail else "")
    return res, None


def spread_cell(runs):
    """(max - min) / median of the runs' time_s, as a table cell."""
    ts = []
    for r in runs:
        try:
            ts.append(float(r["time_s"]))
        except (KeyError, ValueError, TypeError):
            pass
    if len(ts) >= 2 and statistics.median(ts) > 0:
        return "%.0f%%" % (100 * (max(ts) - min(ts)) / statistics.median(ts))
    return "–"


def spread_details(L, summary, first_col, rows, names, runs_of):
    """Each row's run-to-run spread of the times, (max - min) / median, in a
    table folded away in the Markdown. rows: (key, label); runs_of(key,
    name): that cell's runs."""
    L.append("<details><summary>%s</summary>" % summary)
    L.append("")
    L.append("| %s | " % first_col + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for key, label in rows:
        L.append("| %s | %s |" % (label, " | ".join(spread_cell(runs_of(key, n)) for n in names)))
    L.append("")
    L.append("</details>")
    L.append("")


def fnum(res, key):
    """res[key] as a float, or None (missing or not a number)."""
    try:
        return float(res[key])
    except (KeyError, ValueError, TypeError):
        return None


def median_of(runs, key):
    """Median of the runs' key, those that have it; None if none does."""
    vals = [fnum(r, key) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt_time(s):
    if s >= 10:
        return "%.1f s" % s
    if s >= 1:
        return "%.2f s" % s
    return "%.3f s" % s


def mib(kb):
    return "%.1f MiB" % (kb / 1024.0)
