#!/usr/bin/env python3
"""Runs every Tandem benchmark in sequence (Dovecot beside Tandem where they compare) and writes
the report part of docs/benchmarks.md: figures, Tandem/Dovecot ratios, the date, the machine and
the commit, and two plots (docs/bench-lag.svg, docs/bench-sync-size.svg).

usage: python3 scripts/bench_report.py [--quick] [--out docs/benchmarks.md]

--quick runs the CI sizes (a few minutes; the ratios mean little at that size). Without it the
full sizes run (about 15 minutes on a 2-core machine). Only the text between the report markers
of the output file is replaced; notes outside them are kept. Dovecot comparisons need
`doveadm` and `dovecot-imapd` (Debian); without them those rows say "not run".
"""

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- report:begin (written by scripts/bench_report.py; edits here are overwritten) -->"
END = "<!-- report:end -->"


def log(msg):
    sys.stderr.write("bench_report: %s\n" % msg)
    sys.stderr.flush()


def run(cmd, env=None, stream="stdout"):
    """Runs cmd in the repository; returns the JSON-line figures it printed on `stream`."""
    log("running " + " ".join(cmd) + "".join(" %s=%s" % kv for kv in (env or {}).items()))
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    text = p.stdout if stream == "stdout" else p.stderr
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit("bench_report: %s failed (exit %d)" % (" ".join(cmd), p.returncode))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('{"bench"'):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def get(figs, bench, metric):
    for f in figs:
        if f["bench"] == bench and f["metric"] == metric:
            return f["value"]
    return None


def sh(cmd):
    try:
        return subprocess.run(cmd, cwd=ROOT, shell=True, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
    except OSError:
        return ""


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.0f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    distro = sh(". /etc/os-release && echo $PRETTY_NAME")
    return "%s, %d cores, %s RAM, %s, Linux %s" % (
        cpu or platform.processor(), os.cpu_count() or 0, mem, distro, platform.release())


# ---- plots: small hand-written SVG, no plotting library needed ---------------------------------

def nice_ticks(lo, hi, n=5):
    span = hi - lo or 1.0
    mag = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if span / step <= n:
            break
    t = (lo // step) * step
    ticks = []
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(t)
        t += step
    return ticks


def svg_plot(path, title, xlabel, ylabel, series):
    """series: list of (label, colour, [(x, y), ...]). Lines with points."""
    w, h, ml, mr, mt, mb = 640, 360, 70, 150, 40, 50
    xs = [x for _, _, pts in series for x, _ in pts]
    ys = [y for _, _, pts in series for _, y in pts]
    if not xs:
        return False
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = 0.0, max(ys) * 1.1 or 1.0

    def px(x):
        return ml + (x - x0) / (x1 - x0 or 1) * (w - ml - mr)

    def py(y):
        return h - mb - (y - y0) / (y1 - y0 or 1) * (h - mt - mb)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (ml, title)]
    for t in nice_ticks(x0, x1):
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (px(t), mt, px(t), h - mb))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (px(t), h - mb + 16, round(t, 6)))
    for t in nice_ticks(y0, y1):
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (ml, py(t), w - mr, py(t)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (ml - 6, py(t) + 4, round(t, 6)))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (ml, h - mb, w - mr, h - mb))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (ml, mt, ml, h - mb))
    out.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((ml + w - mr) / 2, h - 12, xlabel))
    out.append('<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>' % (
        (mt + h - mb) / 2, (mt + h - mb) / 2, ylabel))
    for i, (label, colour, pts) in enumerate(series):
        pts = sorted(pts)
        d = " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in pts)
        out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (colour, d))
        if len(pts) <= 20:
            for x, y in pts:
                out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (px(x), py(y), colour))
        ly = mt + 10 + 18 * i
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (
            w - mr + 10, ly, w - mr + 30, ly, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (w - mr + 35, ly + 4, label))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


# ---- formatting ---------------------------------------------------------------------------------

def fmt(v, unit=""):
    if v is None:
        return "not run"
    if abs(v) >= 100:
        s = "{:,.0f}".format(v)
    elif abs(v) >= 10:
        s = "%.1f" % v
    else:
        s = "%.3g" % v
    return s + (" " + unit if unit else "")


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[len(xs) // 2]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(r, target, lower_is_better=True):
    if r is None:
        return "—"
    ok = r <= target if lower_is_better else r >= target
    return ("met" if ok else "**not met**")


def figure_table(title, first_column, figs):
    """A section listing JSON-line figures as they came: name, metric, value with unit."""
    out = ["### " + title, "", "| %s | figure | value |" % first_column, "|---|---|---|"]
    for f in figs:
        out.append("| %s | %s | %s |" % (f["bench"], f["metric"].replace("_", " "), fmt(f["value"], f["unit"])))
    return out + [""]


def main():
    quick = "--quick" in sys.argv
    out_path = os.path.join(ROOT, "docs", "benchmarks.md")
    if "--out" in sys.argv:
        out_path = os.path.abspath(sys.argv[sys.argv.index("--out") + 1])
    docs = os.path.dirname(out_path)
    q = ["--", "--quick"] if quick else []
    started = datetime.datetime.now(datetime.timezone.utc)
    # The commit as built: taken before anything runs.
    commit = sh("git rev-parse --short HEAD")
    if sh("git status --porcelain --untracked-files=no"):
        commit += " (with uncommitted changes)"

    store = run(["cargo", "bench", "-q", "--locked", "-p", "tandem-store", "--bench", "store"] + q)
    lag_file = tempfile.NamedTemporaryFile(delete=False).name
    n_main = 500 if quick else 10000
    sync = run(["cargo", "bench", "-q", "--locked", "-p", "tandem-net", "--bench", "sync"] + q,
               env={"SYNC_LAG_FILE": lag_file})
    sizes = [200, 1000] if quick else [1000, 3000, 30000]
    sweep = {n_main: (get(sync, "initial_sync", "time"),
                      get(sync, "initial_sync_dovecot_dsync", "time"))}
    for n in sizes:
        figs = run(["cargo", "bench", "-q", "--locked", "-p", "tandem-net", "--bench", "sync"],
                   env={"SYNC_N": str(n), "SYNC_ONLY_INITIAL": "1"})
        sweep[n] = (get(figs, "initial_sync", "time"), get(figs, "initial_sync_dovecot_dsync", "time"))
    # The IMAP comparison is three runs (one at --quick): single 20-40 ms FETCH timings moved
    # the Tandem/Dovecot ratio between 0.7 and 1.6 from run to run on this machine.
    imap_runs = [run(["cargo", "bench", "-q", "--locked", "-p", "tandem-imap", "--bench", "imap"] + q)
                 for _ in range(1 if quick else 3)]
    drills = run(["cargo", "test", "-q", "--locked", "-p", "tandem", "--test", "drills", "--", "drill_",
                  "--nocapture", "--test-threads=1"], stream="stderr")
    lags = []
    try:
        lags = sorted(float(x) for x in open(lag_file).read().split())
    except (OSError, ValueError):
        pass
    os.unlink(lag_file)

    rustc = sh("rustc --version")
    dovecot = sh("dovecot --version") or "not installed"

    # Plots.
    lag_svg = os.path.join(docs, "bench-lag.svg")
    if lags:
        cdf = [(v, (i + 1) / len(lags)) for i, v in enumerate(lags)]
        svg_plot(lag_svg, "Replication lag, %d appends (A to B's store)" % len(lags),
                 "lag (ms)", "fraction of appends", [("Tandem", "#1f77b4", cdf)])
    size_svg = os.path.join(docs, "bench-sync-size.svg")
    tandem_pts = [(n, t) for n, (t, _) in sweep.items() if t is not None]
    dsync_pts = [(n, d) for n, (_, d) in sweep.items() if d is not None]
    series = [("Tandem", "#1f77b4", tandem_pts)]
    if dsync_pts:
        series.append(("doveadm sync", "#d62728", dsync_pts))
    svg_plot(size_svg, "Initial sync to an empty node, ~4 KB messages", "messages", "seconds", series)

    L = []
    L.append(BEGIN)
    L.append("")
    L.append("## Report")
    L.append("")
    L.append("Written by `python3 scripts/bench_report.py%s` on %s UTC, commit `%s`." % (
        " --quick" if quick else "", started.strftime("%Y-%m-%d %H:%M"), commit))
    L.append("Machine: %s. %s; Dovecot %s. Release builds, except the drills (debug test build)." % (
        machine(), rustc, dovecot))
    L.append("One run: timings on a shared virtual machine drift between runs, so compare the "
             "two systems within a run (the ratio), not across runs.%s" % (
                 " **CI size (--quick): too small for the ratios to mean much.**" if quick else ""))
    L.append("")
    L.append("### Tandem against Dovecot")
    L.append("")
    L.append("| figure | Tandem | Dovecot | Tandem/Dovecot | target |")
    L.append("|---|---|---|---|---|")
    t, d = get(sync, "initial_sync", "time"), get(sync, "initial_sync_dovecot_dsync", "time")
    r = ratio(t, d)
    L.append("| initial sync of %s × 4 KB messages to an empty node (`doveadm sync` between maildirs) | %s | %s | %s | ≤ 0.25: %s |" % (
        "{:,}".format(n_main), fmt(t, "s"), fmt(d, "s"), fmt(r), verdict(r, 0.25)))
    t, d = get(sync, "partition_heal", "time_to_converge"), get(sync, "partition_heal_dovecot_dsync", "time")
    r = ratio(t, d)
    L.append("| heal after a split: each side 100 new messages and 1,000 flag changes | %s | %s | %s | ≤ 1: %s |" % (
        fmt(t, "s"), fmt(d, "s"), fmt(r), verdict(r, 1.0)))
    n_imap = get(imap_runs[0], "imap", "messages")
    per_run = []
    for label, tm, dm, unit, lower, target in [
        ("IMAP APPEND of %s × 4 KB, one connection" % fmt(n_imap), "tandem_append_s", "dovecot_append_s", "s", True, 1),
        ("`FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)`, median of 21", "tandem_fetch_envelope_ms", "dovecot_fetch_envelope_ms", "ms", True, 1),
        ("`UID FETCH 1:* BODY.PEEK[]`, median of 21", "tandem_fetch_bodies_ms", "dovecot_fetch_bodies_ms", "ms", True, 1),
        ("mixed load, 10 clients (throughput)", "tandem_mixed_ops_per_s", "dovecot_mixed_ops_per_s", "ops/s", False, 1),
        ("IMAP server peak RSS (Dovecot: all its processes)", "tandem_peak_rss", "dovecot_peak_rss", "MiB", True, None),
    ]:
        a = median([get(r, "imap", tm) for r in imap_runs])
        b = median([get(r, "imap", dm) for r in imap_runs])
        ratios = [ratio(get(r, "imap", tm), get(r, "imap", dm)) for r in imap_runs]
        r = median(ratios)
        per_run.append((label, ratios))
        tgt = "—" if target is None else ("%s %g: %s" % ("≤" if lower else "≥", target, verdict(r, target, lower)))
        L.append("| %s | %s | %s | %s | %s |" % (label, fmt(a, unit), fmt(b, unit), fmt(r), tgt))
    if len(imap_runs) > 1:
        L.append("")
        L.append("IMAP rows above are the median of %d runs; the ratio in each run:" % len(imap_runs))
        L.append("")
        for label, ratios in per_run:
            L.append("- %s: %s" % (label, ", ".join(fmt(x) for x in ratios)))
    L.append("")
    L.append("### Sync")
    L.append("")
    L.append("| figure | value |")
    L.append("|---|---|")
    L.append("| initial sync throughput (%s messages) | %s |" % ("{:,}".format(n_main), fmt(get(sync, "initial_sync", "throughput"), "msg/s")))
    L.append("| bytes on the wire for it (both directions) | %s |" % fmt((get(sync, "initial_sync", "bytes_on_wire") or 0) / 1e6, "MB"))
    L.append("| receiver peak RSS during it | %s |" % fmt(get(sync, "initial_sync", "receiver_peak_rss"), "MiB"))
    L.append("| replication lag p50 / p99 / max (%d appends; target p99 < 50 ms) | %s / %s / %s |" % (
        len(lags), fmt(get(sync, "replication_lag", "p50"), "ms"), fmt(get(sync, "replication_lag", "p99"), "ms"),
        fmt(get(sync, "replication_lag", "max"), "ms")))
    L.append("")
    L.append("Initial sync against mailbox size:")
    L.append("")
    L.append("| messages | Tandem | doveadm sync | ratio |")
    L.append("|---|---|---|---|")
    for n in sorted(sweep):
        t, d = sweep[n]
        L.append("| %s | %s | %s | %s |" % ("{:,}".format(n), fmt(t, "s"), fmt(d, "s"), fmt(ratio(t, d))))
    L.append("")
    L.append("![initial sync time against mailbox size](bench-sync-size.svg)")
    if lags:
        L.append("![replication lag distribution](bench-lag.svg)")
    L.append("")
    L += figure_table("Store", "benchmark", store)
    L += figure_table("Drills (real `tandem serve` processes, debug build)", "drill", drills)
    L.append(END)
    report = "\n".join(L) + "\n"

    try:
        old = open(out_path).read()
    except OSError:
        old = "# Benchmarks\n\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + report.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        head, _, rest = old.partition("\n")
        new = head + "\n\n" + report + rest
    with open(out_path, "w") as f:
        f.write(new)
    log("wrote %s (%s, %s)" % (out_path, os.path.basename(lag_svg), os.path.basename(size_svg)))
    print(report)


if __name__ == "__main__":
    main()
