"""The shipped example: the default demo's unrefined model and oracle, kept in ``assets/``.

A first start needs something to look at without 14 epochs of training, so the two
models of the default demo (phantom seed 0) ship with the code: their weights as fp16
state dicts (half the bytes, and a model reloaded to fp32 scores as the trained one
within a few images), and ``manifest.json`` with the settings they were trained with, each
file's SHA-256, the code commit, the command and its duration, and the figures measured
on the reloaded weights. ``check`` repeats that measurement on regenerated data, so a
manifest that no longer describes its files is caught, not only a changed byte.

``metrics.json`` holds what ``evaluate`` measures of the two models (every metric, every
explainer), made by ``assets evaluate``: a run opened from the example starts with it, so
its first refinement measures only the refined model. Its entries are keyed by the weights
and the measuring code (``evaluation.evaluation_key``); once that code changes they no
longer apply, and ``check`` says to measure them again.

Nothing here writes into ``assets/`` except ``build``, which refuses to replace the
files without ``overwrite``, and ``evaluate``, which writes only metrics.json and the
manifest's entry for it. A run gets the example by ``install``, which writes the models
as ordinary checkpoints of that run (fp32, with the run's identity). The model files'
own format is ``asset_files``.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from exbl_core import checkpoints, config, errors, evaluation, faithfulness, files, pipeline, run_data, run_models, runs, weights
from exbl_core.asset_files import BUILD_COMMAND, VERSION, fix, fp32_model, load, payload_bytes, read_payload, sha256
from exbl_core.errors import AssetError
from exbl_core.synthetic import SyntheticConfig, generate_split
from exbl_core.training import EventCallback

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "exbl-assets"
ROLES = ("unrefined", "oracle")
EVALUATE_COMMAND = "python -m exbl_core assets evaluate"
TOLERANCE = 0.005  # figures re-measured by check may differ from the manifest's by this much (two images in 400)
FIGURES = ("test_accuracy", "shortcut_test_accuracy", "shortcut_gap")
BUILD_THREADS = 1


def _measure_again(path: Path, problem: str) -> AssetError:
    return AssetError(f"{path}: {problem}; run '{EVALUATE_COMMAND}' to measure the shipped models again")


def shipped_settings() -> dict:
    """The sections of config.json the shipped models depend on: the default demo's data, training and start weights."""
    return settings_doc(config.DEMO.data, config.DEMO.train, weights.StartWeights(weights.RANDOM))


def settings_doc(data: SyntheticConfig, train: config.TrainConfig, start: weights.StartWeights) -> dict:
    """config.json's ``data``, ``train`` and ``model`` sections for these settings."""
    return {"data": {"source": "synthetic", **data.to_dict()}, "train": train.to_dict(), "model": start.to_dict()}


def new_example_run(path: Path) -> runs.Run:
    """A new run with the shipped example's settings (the default demo's), ready for ``install``."""
    demo = config.DEMO
    return run_data.new_run(path, demo.data, demo.train, demo.refine, weights.RANDOM)


def matches(run_config: dict) -> bool:
    """Would a run with this config.json train the shipped models? Data, training settings and start weights all equal.

    Compared as the settings types write them (``config.comparable``): the manifest's ``train``
    section was written when it still held the refinement settings, which training never read.
    """
    return config.comparable({key: run_config.get(key) for key in ("data", "train", "model")}) == shipped_settings()


def _commit() -> str:
    """The code's commit, with "+changes" when the package differs from it, or "unknown" outside a git checkout."""
    root = ASSETS_DIR.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "exbl_core"], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.returncode == 1 else "")


def measure(model: torch.nn.Module, data: SyntheticConfig) -> dict[str, float]:
    """Test accuracy, shortcut-test accuracy and their difference (the shortcut gap) on regenerated phantoms."""
    accuracy = {}
    for split in ("test", "shortcut_test"):
        s = generate_split(split, data)
        accuracy[split] = float((faithfulness.predicted(model, s.float_images()) == s.labels).float().mean())
    test, shortcut = accuracy["test"], accuracy["shortcut_test"]
    return {"test_accuracy": test, "shortcut_test_accuracy": shortcut, "shortcut_gap": test - shortcut}


def read_manifest(directory: Path | None = None) -> dict:
    """manifest.json, checked to describe the shipped settings of this code (else an ``AssetError`` naming it)."""
    path = _folder(directory) / MANIFEST
    try:
        manifest = files.read_json(path)
    except errors.RunError as exc:
        raise fix(path, str(exc).removeprefix(f"{path}: ")) from exc
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != VERSION:
        raise fix(path, f"is not a version-{VERSION} manifest of the shipped example")
    if not isinstance(manifest.get("settings"), dict) or config.comparable(manifest["settings"]) != shipped_settings():
        raise fix(path, "was made for other data or training settings than this code's default demo")
    listed, figures = manifest.get("files"), manifest.get("figures")
    if not isinstance(listed, dict) or set(listed) != set(ROLES) or not all(isinstance(listed[r], dict) for r in ROLES):
        raise fix(path, f"does not list exactly the {' and '.join(ROLES)} models")
    if not isinstance(figures, dict) or not all(
        isinstance(figures.get(r), dict) and all(isinstance(figures[r].get(k), int | float) for k in FIGURES) for r in ROLES
    ):
        raise fix(path, f"does not hold every model's {', '.join(FIGURES)}")
    shipped = manifest.get("metrics")
    if shipped is not None and not (
        isinstance(shipped, dict) and shipped.get("file") == runs.METRICS and isinstance(shipped.get("sha256"), str)
    ):
        raise _measure_again(path, f"its metrics entry does not name {runs.METRICS} and its SHA-256")
    return manifest


def verify(directory: Path | None = None) -> dict:
    """The fast check, before the example is used: the manifest's settings, each file's SHA-256, and a safe load.

    Returns the manifest. Seconds, not minutes: the app and the demo run it on every use.
    """
    directory = _folder(directory)
    manifest = read_manifest(directory)
    for role in ROLES:
        entry = manifest["files"][role]
        path = directory / run_models.model_file(role)
        if not path.is_file():
            raise fix(path, "is missing")
        if sha256(path) != entry.get("sha256"):
            raise fix(path, f"its SHA-256 differs from {MANIFEST}'s (the file was changed or truncated)")
        meta = read_payload(path)
        if meta.get("role") != role or meta.get("data_sha256") != run_models.data_fingerprint(manifest["settings"]["data"]):
            raise fix(path, f"holds another model than the {role} model of {MANIFEST}'s settings")
    if "metrics" in manifest:
        path = directory / runs.METRICS
        if not path.is_file():
            raise _measure_again(path, "is missing")
        if sha256(path) != manifest["metrics"]["sha256"]:
            raise _measure_again(path, f"its SHA-256 differs from {MANIFEST}'s (the file was changed or truncated)")
    return manifest


def check(directory: Path | None = None) -> dict[str, dict[str, float]]:
    """``verify``, then every model re-measured on regenerated test and shortcut-test phantoms, within ``TOLERANCE``.

    Returns the figures measured now, per role.
    """
    directory = _folder(directory)
    manifest = verify(directory)
    data = SyntheticConfig(**{k: v for k, v in manifest["settings"]["data"].items() if k != "source"})
    measured = {}
    for role in ROLES:
        model, _ = load(directory, role)
        with torch.inference_mode():
            measured[role] = now = measure(model, data)
        recorded = manifest["figures"][role]
        off = [f"{k} {now[k]:.4f} against {recorded[k]:.4f}" for k in FIGURES if abs(now[k] - recorded[k]) > TOLERANCE]
        if off:
            raise fix(directory / run_models.model_file(role), f"re-measured {'; '.join(off)} in {MANIFEST}")
    _check_metrics(directory, manifest, measured)
    return measured


def _check_metrics(directory: Path, manifest: dict, measured: dict[str, dict[str, float]]) -> None:
    """metrics.json is listed, was measured by this checkout's evaluation code, and agrees with ``measured``."""
    path = directory / runs.METRICS
    if "metrics" not in manifest:
        raise _measure_again(path, f"is not listed in {MANIFEST}, so a run opened from the example measures both models again")
    if manifest["metrics"].get("evaluation_code") != evaluation.evaluation_code():  # the file's, bound by its SHA-256
        raise _measure_again(
            path, "was measured by other evaluation code than this checkout's (metrics, faithfulness or an explainer changed)"
        )
    shipped = files.read_json(path)
    for role, now in measured.items():
        entry = shipped.get("models", {}).get(role, {})
        recorded = {split: entry.get(split, {}).get("accuracy") for split in ("test", "shortcut_test")}
        if any(not isinstance(v, float) or abs(v - now[f"{split}_accuracy"]) > TOLERANCE for split, v in recorded.items()):
            raise _measure_again(path, f"its {role} accuracies {recorded} differ from the re-measured ones")


def evaluate(directory: Path | None = None, say: Callable[[str], None] = lambda _msg: None) -> dict:
    """Measure the shipped models as ``evaluate`` measures a run's, and write metrics.json and its manifest entry.

    The models are installed into a temporary run with the shipped settings, so the entries
    and their keys are exactly those a run opened from the example would compute. Returns
    the manifest.
    """
    directory = _folder(directory)
    manifest = verify(directory)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="exbl-assets-") as tmp:
        run = new_example_run(Path(tmp) / "run")
        _install_models(run, directory, manifest)
        say(f"Measuring the {' and '.join(ROLES)} models (every metric, every explainer)")
        metrics = pipeline.evaluate_step(run, run_data.load_data(run), torch.device("cpu"))
    files.write_json(directory / runs.METRICS, metrics)
    manifest["metrics"] = {
        "file": runs.METRICS,
        "sha256": sha256(directory / runs.METRICS),
        "evaluation_code": metrics["evaluation_code"],
        "tau": metrics["tau"],
        "command": EVALUATE_COMMAND,
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    files.write_json(directory / MANIFEST, manifest)
    return manifest


def _folder(directory: Path | None) -> Path:
    """``directory``, or ``ASSETS_DIR`` read at call time (tests point it at a copy)."""
    return ASSETS_DIR if directory is None else directory


def check_target(directory: Path, overwrite: bool) -> None:
    """Refuse to replace a shipped example without ``overwrite``; writes nothing."""
    ours = [n for n in (MANIFEST, runs.METRICS, *(run_models.model_file(r) for r in ROLES)) if (directory / n).exists()]
    if ours and not overwrite:
        raise AssetError(f"{directory / ours[0]}: the shipped example is already there; pass --overwrite to make it again")


def build(
    directory: Path | None = None,
    overwrite: bool = False,
    on_event: EventCallback | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> dict:
    """Train the default demo's unrefined model and oracle from random weights and write them and manifest.json.

    Training happens in a temporary run folder; the files are written (atomically) only once
    both models exist and are measured, the manifest last. It runs on one CPU thread
    (``BUILD_THREADS``): a float sum's order depends on how work is split between threads,
    so one thread keeps the bytes from depending on the machine's core count. Then ``evaluate``
    measures them for metrics.json. Returns the manifest.
    """
    directory = _folder(directory)
    check_target(directory, overwrite)
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        _build(directory, on_event, say)
    finally:
        torch.set_num_threads(threads)
    return evaluate(directory, say)


def _build(directory: Path, on_event: EventCallback | None, say: Callable[[str], None]) -> dict:
    started, commit = time.perf_counter(), _commit()  # the code that trains, read before it does
    settings = shipped_settings()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="exbl-assets-") as tmp:
        run = new_example_run(Path(tmp) / "run")
        data = run_data.load_data(run, ("train", "val"))
        for role in ROLES:
            say(f"Training the {role} model (up to {config.DEMO.train.epochs} epochs)")
            pipeline.train_step(run, data, device, on_event, role=role)
        blobs = {role: payload_bytes(run, role) for role in ROLES}
    written, figures = {}, {}
    for role, blob in blobs.items():
        name = run_models.model_file(role)
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        with torch.inference_mode():
            figures[role] = measure(fp32_model(payload, directory / name), config.DEMO.data)
        written[role] = {
            "file": name,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "best_epoch": payload["epoch"],
            "val_loss": payload["val_loss"],
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": VERSION,
        "settings": settings,
        "files": written,
        "figures": figures,
        "commit": commit,
        "command": BUILD_COMMAND,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": BUILD_THREADS,
    }
    for role, blob in blobs.items():
        files.atomic_write_bytes(directory / run_models.model_file(role), blob)
    files.write_json(directory / MANIFEST, manifest)
    return manifest


def install(run: runs.Run, directory: Path | None = None) -> dict:
    """Put the shipped models into ``run`` as its unrefined.pt and oracle.pt (fp32 checkpoints with the run's identity),
    and their measured metrics as its metrics.json when they apply (``brings_metrics``).

    ``run`` must have been created with ``shipped_settings`` (``matches``); the assets are
    verified first and only read. Returns the manifest. The caller holds the run's lock.
    """
    if not matches(run.config()):
        raise errors.RunError(f"{run.path}: its settings differ from the shipped example's, so its models must be trained")
    directory = _folder(directory)
    manifest = verify(directory)
    _install_models(run, directory, manifest)
    if brings_metrics(manifest, run):
        files.atomic_write_bytes(run.file(runs.METRICS), (directory / runs.METRICS).read_bytes())
    return manifest


def brings_metrics(manifest: dict, run: runs.Run) -> bool:
    """Do the shipped metrics apply to ``run``: listed, measured by this code, with the run's tau?

    The weights and data are the shipped ones by then (``verify``, ``matches``), so these
    are what else ``evaluation.evaluation_key`` reads; an entry that does not apply would
    only be measured again, but a page must not show it meanwhile.
    """
    shipped = manifest.get("metrics")
    return (
        shipped is not None
        and shipped.get("evaluation_code") == evaluation.evaluation_code()
        and shipped.get("tau") == run_data.train_config(run, "refine").tau
    )


def _install_models(run: runs.Run, directory: Path, manifest: dict) -> None:
    for role in ROLES:
        model, meta = load(directory, role)
        checkpoint = {
            "phase": Path(run_models.model_file(role)).stem,
            "role": role,
            "epoch": meta["epoch"],
            "image_size": meta["image_size"],
            "val_loss": meta["val_loss"],
            "settings": meta["settings"],
            "shipped_sha256": manifest["files"][role]["sha256"],
            **run_models.run_identity(run),
        }
        checkpoints.save_checkpoint(run.file(run_models.model_file(role)), model.state_dict(), checkpoint)


def describe(manifest: dict) -> str:
    """One line on what the shipped models are, for the demo and the app."""
    fig = manifest["figures"]["unrefined"]
    return (
        f"the shipped example in assets/ (phantom seed {manifest['settings']['data']['seed']}, trained by '{manifest['command']}'; "
        f"test accuracy {fig['test_accuracy']:.3f}, shortcut gap {fig['shortcut_gap']:+.3f})"
    )
