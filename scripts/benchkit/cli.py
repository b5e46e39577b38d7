"""scripts/bench's command line: which parts run, where the results go (JSON, then the Markdown
rendered from it)."""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import asgi, burst, cluster, core, fanout, transport, wsgi
from .common import TARGET, Bench, Procs, log, setup
from .report import Report, load, render

PARTS = {
    "transport": ("only what pool_pass costs over return 200 (1 nginx worker, 1 pool worker)", transport.run),
    "wsgi": ("only the WSGI comparison", wsgi.run),
    "asgi": ("only the ASGI comparison", asgi.run),
    "burst": ("only the burst latency comparison", burst.run),
    "fanout": ("only the seed's fan-out pattern", fanout.run),
    "cluster": ("only the scale-out over hosts", cluster.run),
}


def main(doc):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="also write the Markdown report to OUT")
    ap.add_argument("--json", default=str(TARGET / "bench/results.json"),
                    help="where the results go as data (default target/bench/results.json)")
    ap.add_argument("--render", metavar="JSON", help="only render the Markdown of results kept as JSON")
    for name, (what, _) in PARTS.items():
        ap.add_argument(f"--{name}", action="store_true", help=what)
    args = ap.parse_args()
    if args.render:
        sys.stdout.write(render(load(Path(args.render).read_text())))
        return
    only = [name for name in PARTS if getattr(args, name)]
    report, failed = run(args.quick, only)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(report.to_json())
    text = render(load(Path(args.json).read_text()))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    log(f"results as data in {args.json}")
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)} (the report above has the rest)")


def part(report, failed, name, fn, bench):
    """Runs one part into `report`; a part that fails is named in the report and in `failed`,
    and the others still run (their results are not lost with it)."""
    try:
        report.extend(fn(bench))
    except SystemExit as e:
        log(f"part {name} failed: {e}")
        report.heading(f"{name}: FAILED")
        report.text(f"The {name} part failed: {e}")
        failed.append(name)


def run(quick, only):
    """Runs the parts asked for (all by default); returns the report and the parts that failed."""
    venv = setup(quick)
    procs = Procs()
    prefix = Path(tempfile.mkdtemp(prefix="ngx-pool-bench-"))
    (prefix / "logs").mkdir()
    prefix.chmod(0o755)
    (prefix / "logs").chmod(0o755)
    bench = Bench(quick=quick, prefix=prefix, procs=procs, venv=venv)
    report = Report()
    failed = []
    try:
        if only:
            for name in only:
                report.heading(f"scripts/bench --{name}{' --quick' if quick else ''}", 1)
                part(report, failed, name, PARTS[name][1], bench)
            return report, failed
        part(report, failed, "core", core.run, bench)
        for name in PARTS:
            part(report, failed, name, PARTS[name][1], bench)
    finally:
        procs.stop()
        shutil.rmtree(prefix, ignore_errors=True)
    # The channel micro-benchmark, against its unix-socket baseline.
    report.heading("channel vs unix socket")
    out = subprocess.run([str(TARGET / "release/channel-bench"), "--scale", "0.02" if quick else "1"],
                         check=True, capture_output=True, text=True).stdout
    report.text(out.strip())
    return report, failed
