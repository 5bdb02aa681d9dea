"""End to end: wall time and peak RSS of ``python -m exbl_core demo --quick`` and of the default demo.

Each demo runs as its own process behind a small wrapper (``common.run_command_measured``),
so the peak resident set is the demo's own. The default demo takes minutes, which is
why ``run_all.py --skip-demo`` leaves it out.

    python -m bench.end_to_end [--skip-demo]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import CACHE, DEFAULT_RUN, Section, run_command_measured, table

DEMOS = {"quick": ["--quick"], "default": []}


def command(which: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "exbl_core", "demo", *DEMOS[which], "--out", str(out), "--overwrite"]


def measure(which: str, quick_out: Path = DEFAULT_RUN) -> dict:
    """Run one demo ("quick" writes ``quick_out``, whose checkpoint the other benchmarks reuse); wall s and peak RSS MiB."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = quick_out if which == "quick" else CACHE / "default-run"
    log = CACHE / f"demo-{which}.log"
    print(f"  demo {which} -> {out} (log {log})", flush=True)
    r = run_command_measured(command(which, out), log)
    if r["rc"] != 0:
        raise RuntimeError(f"demo {which} failed with exit code {r['rc']}; see {log}")
    return r


def section(results: dict[str, dict]) -> Section:
    rows = [
        [f"`python -m exbl_core demo{''.join(' ' + a for a in DEMOS[w])}`", f"{r['wall_s']:.0f}", f"{r['peak_rss_mib']:.0f}"]
        for w, r in results.items()
    ]
    md = [
        "One run of each, as a separate process; peak RSS is `getrusage(RUSAGE_CHILDREN).ru_maxrss`",
        "of a wrapper whose only child is the demo.",
        "",
        table(["command", "wall s", "peak RSS MiB"], rows),
    ]
    if "default" not in results:
        md += ["", "The default demo was skipped (`--skip-demo`)."]
    return Section("4. End to end", "\n".join(md), [], results)


def run(skip_default: bool = False) -> Section:
    return section({w: measure(w) for w in (("quick",) if skip_default else ("quick", "default"))})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-demo", action="store_true", help="run only the quick demo")
    print(run(p.parse_args().skip_demo).render())


if __name__ == "__main__":
    main()
