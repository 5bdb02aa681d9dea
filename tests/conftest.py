"""Shared fixtures: tiny synthetic data, a briefly trained model, data sets on disk in the
COVID-19 Radiography Database layout, and one quick CLI demo run per test session.

Everything here is small on purpose: the whole suite must run in minutes on 2 CPU
cores with no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import mobilenet_v2

from exbl_core import weights
from exbl_core.data import CLASSES, Split
from exbl_core.model import XrayMobileNetV2, build_model
from exbl_core.synthetic import SyntheticConfig, generate
from exbl_core.training import recalibrate_batchnorm

# One intra-op thread: on a shared 2-core machine, torch's default of one thread per
# core oversubscribes the CPU and made a training step 30-60x slower in our measurements.
torch.set_num_threads(int(os.environ.get("EXBL_TEST_THREADS", "1")))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers (``make test``) already use both cores, so the processes that tests start
    # (the CLI, a study, the app's server and its job) get one thread too: a thread per core
    # would oversubscribe them, as above.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("EXBL_THREADS", "1")

TINY = SyntheticConfig(size=64, n_train=8, n_val=4, n_test=4, seed=3)
# Smaller still for training loops: MobileNetV2 reduces 32 px to one 1x1 feature map.
MICRO = SyntheticConfig(size=32, n_train=4, n_val=2, n_test=2, seed=5)


@pytest.fixture(scope="session")
def tiny_data() -> dict[str, Split]:
    """All four synthetic splits at 64x64: 32 training images, 16 in each other split."""
    return generate(TINY)


@pytest.fixture(scope="session")
def micro_data() -> dict[str, Split]:
    """All four synthetic splits at 32x32, for tests that train."""
    return generate(MICRO)


@pytest.fixture(scope="session")
def trained_model(tiny_data: dict[str, Split]) -> XrayMobileNetV2:
    """A model trained for a few Adam steps, so that its GradCAMs are not those of random weights.

    The analytic GradCAM must agree with autograd on a *trained* checkpoint, whose
    ReLU pattern and head weights are no longer symmetric around zero.
    """
    torch.manual_seed(0)
    model = build_model(num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = tiny_data["train"]
    x, y = train.float_images(), train.labels
    model.train()
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # As ``fit`` does: eval-mode BatchNorm statistics that match the weights, so CAMs are not all empty.
    recalibrate_batchnorm(model, train, torch.device("cpu"))
    return model.eval()


# --------------------------------------------------------------------------- image files


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 or uint16 array ([H,W] gray or [H,W,C] colour) as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def lung_mask(height: int, width: int) -> np.ndarray:
    """Two elliptical lungs as a uint8 image (255 inside, 0 outside), like the database's masks."""
    v, u = np.mgrid[0:height, 0:width]
    u = u / width * 2 - 1
    v = v / height * 2 - 1
    left = ((u + 0.4) / 0.3) ** 2 + (v / 0.6) ** 2 < 1
    right = ((u - 0.4) / 0.3) ** 2 + (v / 0.6) ** 2 < 1
    return ((left | right) * 255).astype(np.uint8)


def chest_image(size: int, seed: int) -> np.ndarray:
    """A cheap grayscale 'radiograph': a gradient plus noise, uint8."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, size, dtype=np.float32)[None, :].repeat(size, 0)
    return np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 8-bit grayscale PNG of any size, written row by row in a few MB.

    A decompression bomb in miniature: tiny on disk, ``width * height`` bytes decoded.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


DatabaseFactory = Callable[..., Path]


@pytest.fixture
def make_database(tmp_path: Path) -> DatabaseFactory:
    """Build a small data set in exactly the COVID-19 Radiography Database layout.

    ``root/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/{images,masks}/<Class>-<i>.png``
    with 299x299 images (every third one RGB) and 256x256 masks (every other one
    3-channel), plus the metadata files that sit beside the class folders.
    """

    def make(per_class: int = 3, name: str = "COVID-19_Radiography_Dataset") -> Path:
        root = tmp_path / name
        mask = lung_mask(256, 256)
        for c, cls in enumerate(CLASSES):
            for i in range(1, per_class + 1):
                stem = f"{cls}-{i}"
                img = chest_image(299, seed=100 * c + i)
                if i % 3 == 0:
                    img = np.stack([img, img, img], axis=-1)
                save_png(root / cls / "images" / f"{stem}.png", img)
                save_png(root / cls / "masks" / f"{stem}.png", np.stack([mask] * 3, -1) if i % 2 == 0 else mask)
            (root / f"{cls}.metadata.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
        (root / "README.md.txt").write_text("COVID-19 Radiography Database (fixture)\n")
        return root

    return make


# --------------------------------------------------------------------------- backbone weights


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of our own, so that no test sees (or fills) the user's."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture(scope="session")
def mobilenet_reference() -> torch.nn.Module:
    """A randomly initialised torchvision MobileNetV2: the layout of the ImageNet file, without the download."""
    torch.manual_seed(0)
    return mobilenet_v2()


@pytest.fixture
def weights_file(tmp_path: Path, mobilenet_reference: torch.nn.Module) -> Path:
    """``mobilenet_reference``'s state dict saved to a file, as a user would pass it to --weights."""
    path = tmp_path / "weights" / "mobilenet_v2.pt"
    path.parent.mkdir()
    torch.save(mobilenet_reference.state_dict(), path)
    return path


@pytest.fixture
def cached_imagenet(hub: Path, weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``weights_file`` in the hub cache under a torchvision-style name that carries its own hash prefix."""
    prefix = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(weights, "IMAGENET_URL", f"https://download.invalid/models/mobilenet_v2-{prefix}.pth")
    target = weights.imagenet_file()
    target.parent.mkdir(parents=True)
    return Path(shutil.copy(weights_file, target))


# --------------------------------------------------------------------------- the quick demo


SLOW_FIXTURES = frozenset({"demo_run", "quick_study"})
"""Fixtures that cost more than the fast tests together: every test that uses one is ``slow``.

Marking only the first user would not do: with it deselected, the next user pays instead.
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the users of ``SLOW_FIXTURES`` (directly or through another fixture) slow, so ``make test-fast`` skips them.

    ``make test`` runs two pytest-xdist workers with ``--dist loadfile``, and a session
    fixture is built once in every worker that uses it; so the users of each slow fixture
    must sit in one file, or it is paid for twice. (``--dist loadgroup`` would say so with
    marks, but pytest-xdist 3.8 cannot attach them to pytest 9's node ids.)
    """
    files: dict[str, set[str]] = {}
    for item in items:
        for name in SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            files.setdefault(name, set()).add(item.nodeid.split("::")[0])
    spread = {name: sorted(paths) for name, paths in files.items() if len(paths) > 1}
    if spread:
        raise pytest.UsageError(f"the users of a slow session fixture must sit in one file (see tests/conftest.py): {spread}")


@dataclass
class DemoRun:
    """The result of ``python -m exbl_core demo --quick``: exit code, output and run folder."""

    path: Path
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run the quick demo once per session through the CLI's ``main`` (about half a minute)."""
    from exbl_core import cli

    out = tmp_path_factory.mktemp("demo") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["demo", "--quick", "--out", str(out)])
    return DemoRun(out, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def demo_copy(demo_run: DemoRun, tmp_path: Path) -> Path:
    """A private copy of the demo run folder that a test may change."""
    assert demo_run.exit_code == 0, demo_run.stderr[-2000:]
    return Path(shutil.copytree(demo_run.path, tmp_path / "run"))


@dataclass
class QuickStudy:
    """The result of ``python -m exbl_core study --quick`` over seed 0 with ``methods``, run as a module."""

    path: Path
    methods: tuple[str, ...]
    done: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> QuickStudy:
    """One finished quick study per session (about half a minute), run as ``python -m exbl_core`` in a
    subprocess as a user runs it; the tests that resume it work on copies (``study_copy``)."""
    out = tmp_path_factory.mktemp("study") / "study"
    methods = ("exbl", "counterexamples")
    argv = [sys.executable, "-m", "exbl_core", "study", "--out", str(out), "--seeds", "0", "--methods", *methods, "--quick"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=900)
    return QuickStudy(out, methods, done)


@pytest.fixture
def study_copy(quick_study: QuickStudy, tmp_path: Path) -> Path:
    """A private copy of the finished quick study (without lock files) that a test may resume."""
    assert quick_study.done.returncode == 0, quick_study.done.stderr[-2000:]
    return Path(shutil.copytree(quick_study.path, tmp_path / "study", ignore=shutil.ignore_patterns(".lock")))


TINY_RUN = ("--quick", "--size", "32", "--per-class", "2", "2", "2")
"""CLI options of the smallest run that trains, picks and refines in seconds."""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run taken through train, pick and a finished eXBL refinement with the CLI; tests change copies only."""
    from exbl_core import cli

    path = tmp_path_factory.mktemp("tiny") / "run"
    assert cli.main(["train", "--run", str(path), *TINY_RUN, "--epochs", "1"]) == 0
    assert cli.main(["pick", "--run", str(path), "--good", "0", "--bad", "1"]) == 0
    assert cli.main(["refine", "--run", str(path), "--epochs", "1"]) == 0
    return path


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_run`` (without its lock file) that a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))


def example_preset():
    """A tiny stand-in for the default demo's preset, so that a shipped example builds in seconds."""
    from dataclasses import replace

    from exbl_core import config

    return replace(
        config.DEMO,
        data=SyntheticConfig(size=32, n_train=2, n_val=2, n_test=3, viral_strength=2.0),
        train=config.TrainConfig(epochs=1, lr=1e-3, batch_size=8),
        refine=config.RefineConfig(epochs=1, batch_size=8),
        methods=("exbl",),
    )


@pytest.fixture(scope="session")
def tiny_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shipped example built once by ``assets build`` with ``example_preset`` as the demo's preset; tests use copies."""
    from exbl_core import cli, config

    folder = tmp_path_factory.mktemp("assets") / "example"
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mp.setattr(config, "DEMO", example_preset())
        assert cli.main(["assets", "build", "--dir", str(folder)]) == 0
    return folder


@pytest.fixture
def shipped_example(tiny_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of ``tiny_example`` that the code uses as ``assets/``, with ``example_preset`` as the demo's preset."""
    from exbl_core import assets, config

    monkeypatch.setattr(config, "DEMO", example_preset())
    copy = Path(shutil.copytree(tiny_example, tmp_path / "assets"))
    monkeypatch.setattr(assets, "ASSETS_DIR", copy)
    return copy
