"""Timing, memory and setup helpers shared by the benchmarks.

The machine these run on is small (2 CPU cores) and often shared, so absolute times
drift by tens of percent from minute to minute. Every figure we report is therefore
a *ratio* between methods timed side by side: inside each repeat every method runs
once, and the order alternates between repeats (so no method always runs first, warm
or cold). Two ratios are reported: one from each method's fastest repeat (other jobs
only ever add time, so the minimum is the least disturbed figure; targets are judged
on it) and, in parentheses, the median over repeats of the per-repeat ratio. On a
quiet machine they agree; when other jobs' load swings within seconds they do not,
and the median one is the noisier.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
DEFAULT_RUN = CACHE / "quick-run"


@contextlib.contextmanager
def scratch_run(prefix: str) -> Iterator[Path]:
    """A path for one measurement's run, in a new folder under the cache that is removed afterwards.

    A new folder rather than a fixed name cleared first: only what this measurement wrote is
    ever deleted, never a folder that someone else's files may sit in.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=CACHE) as folder:
        yield Path(folder) / "run"


# --------------------------------------------------------------------------- timing


@dataclass
class Timings:
    """Seconds per call for each method, one entry per repeat, all from one interleaved loop."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def best(self, name: str) -> float:
        """The fastest repeat: interference from other jobs only ever adds time, so this is the least disturbed figure."""
        return min(self.seconds[name])

    def ratio(self, name: str, reference: str) -> float:
        """time(name) / time(reference) from each method's fastest repeat (lower is cheaper)."""
        return self.best(name) / self.best(reference)

    def ratio_median(self, name: str, reference: str) -> float:
        """Median over repeats of time(name) / time(reference) measured in the same repeat."""
        return statistics.median(a / b for a, b in zip(self.seconds[name], self.seconds[reference], strict=True))

    def speedup(self, name: str, reference: str) -> float:
        """Throughput of ``name`` relative to ``reference`` from the fastest repeats (>1 means ``name`` is faster)."""
        return 1 / self.ratio(name, reference)

    def speedup_median(self, name: str, reference: str) -> float:
        return 1 / self.ratio_median(name, reference)

    def both(self, name: str, reference: str, speed: bool = False) -> str:
        """'best-based (median-based)' as text, for a table cell."""
        if speed:
            return f"{self.speedup(name, reference):.2f} ({self.speedup_median(name, reference):.2f})"
        return f"{self.ratio(name, reference):.2f} ({self.ratio_median(name, reference):.2f})"


def compare(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """Time every function once per repeat, alternating the order, after ``warmup`` untimed rounds.

    The warm-up absorbs one-off costs (oneDNN kernel selection, first-touch of buffers)
    that a long-running app pays once; ``gc.collect`` before each call keeps Python's
    collector from firing inside one method's timing because of another's garbage.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = Timings({name: [] for name in names})
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            start = time.perf_counter()
            fns[name]()
            out.seconds[name].append(time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def peak_rss_of_call(fn: Callable[[], object]) -> float:
    """MiB by which this process's resident set grows at its peak during one call of ``fn``.

    Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``,
    value 5), so the peak is taken over the call alone: everything torch, numpy and
    OpenCV touch counts, unlike ``tracemalloc``, which sees only Python objects.
    Run it in a fresh process started by ``measure_in_child``: glibc keeps freed
    memory for reuse, so a second method in the same process would look cheaper.
    """
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def measure_in_child(args: Sequence[str], timeout: float = 900) -> dict:
    """Run ``python -m <args>`` in a fresh interpreter and parse the JSON it prints last.

    ``MALLOC_MMAP_THRESHOLD_`` fixes glibc's mmap threshold at 64 KiB, so every tensor
    larger than that is unmapped when freed and the resident set follows live memory
    instead of glibc's dynamic heap, which otherwise hides reuse.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_command_measured(cmd: Sequence[str], log: Path | None = None, timeout: float = 3600) -> dict:
    """Wall time and peak RSS (MiB) of ``cmd``, through a small wrapper process.

    The wrapper has no other children, so ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is
    the command's own peak resident set, whatever else this benchmark ran before.
    """
    script = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "out = open(sys.argv[1], 'w') if sys.argv[1] else subprocess.DEVNULL\n"
        "rc = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT).returncode\n"
        "wall = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': rc, 'wall_s': wall, 'peak_rss_mib': peak}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(log or ""), *cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- setup


def ensure_trained_run(run_dir: Path | None = None) -> Path:
    """A run folder with a trained unrefined.pt: ``run_dir`` if given, else a cached quick demo.

    Random weights give degenerate CAMs (often all-zero after the ReLU), which would
    make the agreement checks meaningless, so the benchmarks use a trained model.
    """
    run_dir = Path(run_dir) if run_dir is not None else DEFAULT_RUN
    if not (run_dir / "unrefined.pt").is_file():
        print(f"Training a checkpoint with the quick demo into {run_dir} ...", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "exbl_core", "demo", "--quick", "--out", str(run_dir), "--overwrite"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return run_dir


def load_trained(run_dir: Path, which: str = "unrefined") -> torch.nn.Module:
    """The run's model in eval mode on the CPU."""
    from exbl_core import run_models, runs

    return run_models.load_model(runs.open_run(run_dir), which, torch.device("cpu"))


def synthetic_batch(size: int, n: int, split: str = "test", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` synthetic phantoms at ``size``: float images [n,1,H,W] in [0, 1], labels [n], lung masks [n,H,W]."""
    from exbl_core.synthetic import SyntheticConfig, generate_split

    per_class = -(-n // 4)
    cfg = SyntheticConfig(size=size, n_train=per_class, n_val=per_class, n_test=per_class, seed=seed)
    s = generate_split(split, cfg)
    idx = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))[:n]
    return s.float_images(idx), s.labels[idx], s.masks[idx]


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's result: Markdown for RESULTS.md and the targets it checks."""

    title: str
    markdown: str
    targets: list[tuple[str, str, bool]] = field(default_factory=list)  # (target, measured, met)
    data: dict = field(default_factory=dict)

    def render(self) -> str:
        return f"## {self.title}\n\n{self.markdown}\n"


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every model benchmark shares: the checkpoint, input sizes, batch and repeats."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--run", type=Path, help="run folder with unrefined.pt (default: a cached quick demo)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    return p
