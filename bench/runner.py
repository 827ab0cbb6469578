#!/usr/bin/env python3
"""loam benchmark runner (called by bench/run.sh; stdlib only).

Runs every workload of loam-bench against each allocator (glibc as is, the
others by LD_PRELOAD), several times with the allocators interleaved, then
times real programs (python3, sqlite3, sort) under each allocator (the
"Real programs" section, programs.py), counts instructions per malloc+free
pair under callgrind, runs the collector workloads of bench/gc (the
"Collected heap" section, gc/gcrunner.py), and prints a Markdown report
(also written to bench/results/latest.md, with the raw numbers in
latest.json).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gc"))
from benchproc import child_env, fmt_time, log, median_of, mib, parse_line, run_checked, spread_details  # noqa: E402,F401
import gcrunner  # noqa: E402  (bench/gc/gcrunner.py: the "Collected heap" section)
import programs  # noqa: E402  (bench/programs.py: the "Real programs" section)

LIBDIR = "/usr/lib/x86_64-linux-gnu"

# name, preload library (None: the C library's own malloc), Debian package
PEERS = [
    ("glibc", None, "libc6"),
    ("jemalloc", LIBDIR + "/libjemalloc.so.2", "libjemalloc2"),
    ("mimalloc", LIBDIR + "/libmimalloc.so.2", "libmimalloc2.0"),
    ("tcmalloc", LIBDIR + "/libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
]
BASELINE = "mimalloc"

# name, label in the table (the order here is the order of the rows)
WORKLOADS = [
    ("pair", "malloc/free pair, 64 B"),
    ("batch", "batch: 1000 mallocs, 1000 frees"),
    ("batch-random", "batch of 50,000 mixed 16–256 B, freed in random order"),
    ("churn-512", "churn 8–512 B, 16 Ki live"),
    ("churn-4k", "churn 8–4096 B, 16 Ki live"),
    ("large", "large 64 KiB–4 MiB, touched"),
    ("realloc-double", "realloc to 64 MiB, doubling"),
    ("realloc-step", "realloc to 64 MiB, 64 B steps"),
    ("frag", "fragmentation 64 B / 128 B"),
    ("freeall", "free everything"),
    ("prodcons", "2 threads: producer → consumer"),
    ("larson", "Larson-like, 2 threads"),
    ("churn2", "2 threads × churn 8–512 B"),
]

CALLGRIND = [
    ("cg-steady", "steady state (1000 of the class live)"),
    ("cg-batch", "batches of 1000"),
]


def expected_provider(lib):
    return None if lib is None else os.path.basename(lib)


def provider_ok(result, lib):
    got = result.get("malloc_from", "")
    if lib is None:
        return got.startswith("libc.so")
    return got == os.path.basename(lib)


def run_once(binary, workload, lib, scale, seed, timeout):
    """One process. Returns (result dict or None, error string or None)."""
    cmd = [binary, workload, "--scale", str(scale), "--seed", str(seed)]
    res, err = run_checked(cmd, lib, timeout)
    if err:
        return None, err
    if not provider_ok(res, lib):
        return None, "malloc came from %s, not %s (preload did not take)" % (
            res.get("malloc_from"), expected_provider(lib) or "libc")
    return res, None


def run_timed(binary, allocs, workloads, runs, scale, seed, timeout):
    """results[workload][alloc] = {"runs": [...], "error": str|None}"""
    results = {w: {a: {"runs": [], "error": None} for a, _ in allocs}
               for w in workloads}
    total = len(workloads)
    for wi, w in enumerate(workloads):
        t0 = time.monotonic()
        for r in range(runs):
            k = r % len(allocs)
            order = allocs[k:] + allocs[:k]   # a different allocator first each run
            bits = []
            for name, lib in order:
                cell = results[w][name]
                if cell["error"]:
                    continue                   # failed once: no more runs
                res, err = run_once(binary, w, lib, scale, seed, timeout)
                if err:
                    cell["error"] = err
                    bits.append("%s FAIL" % name)
                    log("  %s / %s: %s" % (w, name, err))
                    continue
                cell["runs"].append(res)
                bits.append("%s %.3f" % (name, float(res["time_s"])))
            log("[%d/%d] %-15s run %d/%d: %s" % (wi + 1, total, w, r + 1, runs,
                                                 ", ".join(bits)))
        log("        %-15s %.1f s" % (w, time.monotonic() - t0))
    return results


def callgrind_self_cost(path, function):
    """Instructions spent in `function` itself (its callees excluded), from a
    callgrind out file: the loop of the cg-* workload, to be told apart from
    what malloc and free cost."""
    names = {}
    current = None
    after_calls = False
    total = 0
    with open(path) as f:
        for line in f:
            head = line[:1]
            if head in "0123456789+-*":
                if after_calls:            # inclusive cost of a call: not self
                    after_calls = False
                elif current == function:
                    parts = line.split()
                    if len(parts) >= 2:
                        total += int(parts[1])
                continue
            m = re.match(r"^(c?fn)=(?:\((\d+)\))?\s*(.*?)\s*$", line)
            if m:
                kind, ident, name = m.groups()
                if ident is not None:
                    if name:
                        names[ident] = name
                    else:
                        name = names.get(ident, "")
                if kind == "fn":
                    current = name
            elif line.startswith("calls="):
                after_calls = True
    return total


def callgrind_total(binary, workload, lib, n, tmpdir):
    """Instructions executed by one run under callgrind (the whole program,
    and the workload's own loop), and the number of pairs it did."""
    out = os.path.join(tmpdir, "callgrind.out.%s.%d" % (workload, n))
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
           binary, workload, "--n", str(n)]
    p = subprocess.run(cmd, env=child_env(lib), capture_output=True, text=True,
                       timeout=600)
    res = parse_line(p.stdout)
    if p.returncode != 0 or res is None:
        raise RuntimeError("callgrind run failed (exit %d): %s" % (
            p.returncode, " ".join(p.stderr.strip().splitlines()[-2:])))
    if not provider_ok(res, lib):
        raise RuntimeError("malloc came from %s under valgrind" % res.get("malloc_from"))
    total = None
    try:
        with open(out) as f:
            for line in f:
                m = re.match(r"^(summary|totals):\s+(\d+)", line)
                if m:
                    total = int(m.group(2))
                    if m.group(1) == "summary":
                        break
    except OSError:
        pass
    if total is None:                        # fall back to valgrind's stderr
        m = re.search(r"Collected\s*:\s*(\d+)", p.stderr)
        if m:
            total = int(m.group(1))
    if total is None:
        raise RuntimeError("no instruction total in the callgrind output")
    try:
        loop = callgrind_self_cost(out, "wl_" + workload.replace("-", "_"))
    except (OSError, ValueError):
        loop = 0
    return total, loop, int(res.get("pairs", n))


def run_callgrind(binary, allocs, n):
    """per[workload][alloc] = instructions per pair, or an error string."""
    per = {w: {} for w, _ in CALLGRIND}
    if not shutil.which("valgrind"):
        return per, "valgrind not found: callgrind section skipped"
    with tempfile.TemporaryDirectory(prefix="loam-cg-") as tmp:
        for w, _ in CALLGRIND:
            for name, lib in allocs:
                try:
                    i1, l1, p1 = callgrind_total(binary, w, lib, n, tmp)
                    i2, l2, p2 = callgrind_total(binary, w, lib, 2 * n, tmp)
                    if p2 <= p1 or i2 <= i1:
                        raise RuntimeError("instruction count did not grow with N")
                    whole = (i2 - i1) / (p2 - p1)
                    loop = (l2 - l1) / (p2 - p1)
                    per[w][name] = {"per_pair": whole - loop, "with_loop": whole,
                                    "loop": loop}
                    log("callgrind %-9s %-9s %.1f instructions per pair "
                        "(%.1f with the loop)" % (w, name, whole - loop, whole))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    per[w][name] = "FAIL: %s" % e
                    log("callgrind %s %s: %s" % (w, name, e))
    return per, None


# ---- report ------------------------------------------------------------------

LOAD_AT_START = os.getloadavg()


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    libc = platform.libc_ver()
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "libc": " ".join(libc) if libc[0] else "?",
        "load_start": "%.2f" % LOAD_AT_START[0],
        "load_end": "%.2f" % os.getloadavg()[0],
    }


def package_versions(pkgs):
    if not shutil.which("dpkg-query"):
        return {}
    out = {}
    for pkg in pkgs:
        p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                           capture_output=True, text=True)
        if p.returncode == 0 and p.stdout:
            out[pkg] = p.stdout.strip()
    return out


def spread_table(L, names, results):
    """(max - min) / median of the times, folded away in the Markdown."""
    spread_details(L, "Run-to-run spread of the times: (max − min) / median", "workload",
                   [(w, label) for w, label in WORKLOADS if w in results], names,
                   lambda w, n: results[w][n]["runs"])


def time_section(L, args, names, results, notes):
    """The table of times and peak RSS, with the memory ratios under it."""
    base = BASELINE if BASELINE in names else names[0]
    L.append("## Time and peak RSS")
    L.append("")
    L.append("Each cell: median wall time of the workload's timed part · ratio to "
             "%s's median (lower is better) · median peak RSS of the process "
             "(VmHWM)." % base)
    L.append("")
    L.append("| workload | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for w, label in WORKLOADS:
        if w not in results:
            continue
        row = results[w]
        bt = median_of(row[base]["runs"], "time_s") if row.get(base) else None
        cells = []
        sums = set()
        for n in names:
            c = row[n]
            if c["error"] and not c["runs"]:
                cells.append("FAIL")
                notes.append("%s / %s: %s" % (w, n, c["error"]))
                continue
            t = median_of(c["runs"], "time_s")
            pk = median_of(c["runs"], "peak_rss_kb")
            ratio = "×%.2f" % (t / bt) if bt else "–"
            cell = "%s · %s · %s" % (fmt_time(t), ratio, mib(pk))
            if c["error"]:
                cell += " (FAIL in a later run)"
                notes.append("%s / %s: %s" % (w, n, c["error"]))
            cells.append(cell)
            for r in c["runs"]:
                sums.add(r.get("checksum"))
        if len(sums) > 1:
            notes.append("%s: checksums differ between runs/allocators: %s"
                         % (w, ", ".join(sorted(sums))))
        L.append("| %s | %s |" % (label, " | ".join(cells)))
    # memory ratios
    extra = [
        ("frag", "final_over_live", "fragmentation: RSS / live bytes (at the end)", "%.2f"),
        ("frag", "peak_over_live", "fragmentation: peak RSS / live bytes", "%.2f"),
        ("freeall", "end_over_start", "free everything: RSS / start RSS, after 1.5 s", None),
        ("freeall", "freed_over_start", "free everything: RSS / start RSS, at once", None),
    ]
    for w, key, label, fmt in extra:
        if w not in results:
            continue
        cells = []
        for n in names:
            runs = results[w][n]["runs"]
            v = median_of(runs, key)
            if v is None:
                cells.append("–")
            elif fmt:
                cells.append(fmt % v)
            else:
                start = median_of(runs, "start_rss_kb")
                cells.append("%.2f (+%s)" % (v, mib(max(0.0, (v - 1) * start))))
        L.append("| %s | %s |" % (label, " | ".join(cells)))
    L.append("")
    if "frag" in results or "freeall" in results:
        L.append("Fragmentation ratios count only the RSS above the process's RSS "
             "before the first allocation (the workload's own pointer arrays "
             "are excluded); 1.00 would be no overhead at all. Free-everything: "
             "RSS after all blocks are freed over RSS at start (allocator "
             "initialised), with the retained memory in brackets.")
        L.append("")
    if args.runs >= 2:
        spread_table(L, names, results)


def report(args, allocs, skipped, results, per_pair, cg_note, info, versions,
           gc=None, progs=None):
    names = [a for a, _ in allocs]
    L = []
    L.append("# loam benchmarks")
    L.append("")
    L.append("- date: %s" % info["date"])
    L.append("- machine: %s, %s CPUs, Linux %s, %s; load average (1 min) %s at the "
             "start, %s at the end" % (info["cpu"], info["nproc"], info["kernel"],
                                       info["libc"], info["load_start"], info["load_end"]))
    described = []
    for n, lib, pkg in args.all_allocs:
        if n in names:
            what = lib if n == "loam" else "%s %s" % (pkg, versions.get(pkg, "?"))
            described.append("%s (%s)" % (n, what))
    L.append("- allocators: %s" % ", ".join(described))
    for n, why in skipped:
        L.append("- **%s skipped**: %s" % (n, why))
    L.append("- runs per cell: %d (allocators interleaved), scale %g, seed %d"
             % (args.runs, args.scale, args.seed))
    L.append("")
    notes = []
    if results:
        time_section(L, args, names, results, notes)
    if progs is not None:
        programs.section(L, args, progs["programs"], progs["columns"],
                         progs["skipped"], progs["results"], notes, BASELINE)
    if gc is not None:
        gcrunner.section(L, args, gc["workloads"], gc["columns"], gc["skipped"],
                         gc["results"], notes)
    # callgrind
    L.append("## Instructions per malloc+free pair (callgrind)")
    L.append("")
    if cg_note:
        L.append(cg_note)
    elif per_pair and any(per_pair[w] for w, _ in CALLGRIND):
        loops = []
        for w, _ in CALLGRIND:
            vs = [v["loop"] for v in per_pair[w].values() if isinstance(v, dict)]
            if vs:
                loops.append("%.0f in %s" % (statistics.median(vs), w))
        L.append("`valgrind --tool=callgrind` on `loam-bench cg-steady` / `cg-batch` "
                 "with N = %d and %d pairs of malloc(64)+free; (instructions(2N) − "
                 "instructions(N)) / N, so start-up cancels. Shown: the instructions "
                 "executed inside malloc and free; in brackets, the whole program per "
                 "pair, which adds the calling loop's own instructions and the two "
                 "PLT jumps (%s)." % (args.cg_n, 2 * args.cg_n, ", ".join(loops) or "?"))
        L.append("")
        L.append("| pattern | " + " | ".join(names) + " |")
        L.append("|---|" + "---|" * len(names))
        for w, label in CALLGRIND:
            cells = []
            for n in names:
                v = per_pair[w].get(n)
                if v is None:
                    cells.append("–")
                elif isinstance(v, str):
                    cells.append("FAIL")
                    notes.append("callgrind %s / %s: %s" % (w, n, v[6:]))
                else:
                    cells.append("%.1f (%.1f)" % (v["per_pair"], v["with_loop"]))
            L.append("| %s | %s |" % (label, " | ".join(cells)))
    else:
        L.append("(not run: BENCH_CALLGRIND=0 or BENCH_ONLY without callgrind)")
    L.append("")
    if notes:
        L.append("## Problems")
        L.append("")
        for n in notes:
            L.append("- " + n)
        L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True, help="the loam-bench program")
    ap.add_argument("--loam-lib", default="", help="libloam-malloc.so to preload")
    ap.add_argument("--loam-note", default="", help="why loam is missing, if it is")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--only", default="", help="comma-separated workloads")
    ap.add_argument("--allocators", default="", help="comma-separated allocators")
    ap.add_argument("--callgrind", type=int, default=1)
    ap.add_argument("--cg-n", type=int, default=200000)
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per run (default 120 x scale)")
    ap.add_argument("--out", default="", help="directory for latest.md / latest.json")
    gcrunner.add_arguments(ap)
    programs.add_arguments(ap)
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    args.all_allocs = list(PEERS) + [("loam", args.loam_lib or None, "")]
    wanted = [a for a in args.allocators.split(",") if a]
    allocs, skipped = [], []
    for name, lib, _pkg in args.all_allocs:
        if wanted and name not in wanted:
            continue
        if name == "loam" and not args.loam_lib:
            skipped.append((name, args.loam_note or "no libloam-malloc.so"))
        elif lib is not None and not os.path.exists(lib):
            skipped.append((name, "%s not found" % lib))
        else:
            allocs.append((name, lib))
    for n, why in skipped:
        log("note: %s skipped: %s" % (n, why))
    known = [w for w, _ in WORKLOADS]
    only = [w for w in args.only.split(",") if w]
    for w in only:
        if w not in known and w not in ("callgrind", gcrunner.GROUP, programs.GROUP) and \
           w not in gcrunner.NAMES and w not in programs.NAMES:
            log("unknown workload %s (known: %s, callgrind, %s: %s, %s: %s)" % (
                w, ", ".join(known), gcrunner.GROUP, ", ".join(gcrunner.NAMES),
                programs.GROUP, ", ".join(programs.NAMES)))
            return 2
    workloads = [w for w in known if not only or w in only]
    timeout = args.timeout or 120.0 * max(1.0, args.scale)
    gc_wls, gc_cols, gc_skipped = gcrunner.plan(args, only)
    for n, why in gc_skipped:
        log("note: collected heap: %s skipped: %s" % (n, why))
    # the programs' columns are args.all_allocs, not allocs: a missing
    # peer keeps its column, the package to install in its cells
    pr_list, pr_cols, pr_skipped = programs.plan(args, only, wanted)
    for n, why in pr_skipped:
        log("note: real programs: %s skipped: %s" % (n, why))
    want_cg = args.callgrind and (not only or "callgrind" in only)
    if not allocs and (workloads or want_cg):
        log("no allocator to run")
        return 2

    started = time.monotonic()
    results = run_timed(args.bin, allocs, workloads, args.runs, args.scale,
                        args.seed, timeout) if allocs else {}
    progs = None
    if pr_list or pr_skipped:
        progs = {"programs": pr_list, "columns": pr_cols, "skipped": pr_skipped,
                 "results": programs.run(args, pr_list, pr_cols, timeout)
                 if pr_list and pr_cols else {}}
    gc = None
    if gc_wls:
        gc = {"workloads": gc_wls, "columns": gc_cols, "skipped": gc_skipped,
              "results": gcrunner.run(args, gc_wls, gc_cols, timeout)}
    per_pair, cg_note = ({}, None)
    if want_cg:
        per_pair, cg_note = run_callgrind(args.bin, allocs, args.cg_n)
    log("total %.0f s" % (time.monotonic() - started))

    info = machine_info()
    versions = package_versions([p for _, _, p in PEERS])
    md = report(args, allocs, skipped, results, per_pair, cg_note, info, versions,
                gc, progs)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "latest.md"), "w") as f:
            f.write(md + "\n")
        raw = {
            "machine": info, "versions": versions, "runs": args.runs,
            "scale": args.scale, "seed": args.seed,
            "allocators": {n: l for n, l in allocs},
            "skipped": dict(skipped),
            "timed": results,
            "callgrind_per_pair": per_pair,
            "collected": None if gc is None else {
                "columns": {n: [b] + x + ([p] if p else []) for n, b, x, p in gc["columns"]},
                "skipped": dict(gc["skipped"]), "results": gc["results"]},
            "programs": None if progs is None else {
                "programs": {n: p for n, _l, p in progs["programs"]},
                "skipped": dict(progs["skipped"]), "results": progs["results"],
                "scale": args.programs_scale},
        }
        with open(os.path.join(args.out, "latest.json"), "w") as f:
            json.dump(raw, f, indent=1)
        log("written %s/latest.md and latest.json" % args.out)
    failed = any(c["error"] for w in results.values() for c in w.values())
    if gc is not None:
        failed = failed or any(c["error"] for w in gc["results"].values()
                               for c in w.values())
    if progs is not None:
        failed = failed or any(c["error"] for w in progs["results"].values()
                               for c in w.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
