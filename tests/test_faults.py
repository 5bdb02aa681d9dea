"""Fault injection: bad files, bad layouts, bad checkpoints, a full disk, SIGKILL.

Each case must end in a clear error that names the file or setting, and lose nothing
that was already on disk. Training faults (NaN loss, cancellation) are in
test_training.py.
"""

from __future__ import annotations

import ast
import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image, ImageFile

from exbl_core import checkpoints, config, errors, files, run_data, runs
from exbl_core import data as data_module
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import CLASSES, DataError, SplitSizes, load_entries, load_pair, make_split, read_gray, scan_dataset
from exbl_core.model import build_model
from tests.conftest import huge_png, lung_mask, save_png

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model4():
    return build_model(num_classes=4)


@pytest.fixture
def good_png(tmp_path: Path) -> bytes:
    path = save_png(tmp_path / "src.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    return path.read_bytes()


# --------------------------------------------------------------------------- image files


def test_zero_byte_image_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "COVID-1.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"COVID-1\.png.*empty"):
        read_gray(path)


def test_truncated_png_is_refused_naming_the_file(tmp_path, good_png):
    path = tmp_path / "cut.png"
    path.write_bytes(good_png[: len(good_png) // 2])
    with pytest.raises(DataError, match=r"cut\.png.*not a readable image"):
        read_gray(path)


def test_random_bytes_named_png_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match=r"noise\.png.*not a readable image"):
        read_gray(path)


def test_rgba_image_loads_as_the_gray_of_its_colour_ignoring_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0  # fully transparent
    pixels = read_gray(save_png(tmp_path / "rgba.png", rgba))
    assert pixels == pytest.approx(np.full((4, 4), 200 / 255), abs=1e-6)


def test_16_bit_grayscale_png_is_scaled_by_its_full_range(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], np.uint16)
    path = save_png(tmp_path / "deep.png", values)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit
    assert read_gray(path) == pytest.approx(values / 65535.0, abs=1e-6)


def test_16_bit_image_and_mask_pair_loads(tmp_path):
    image = save_png(tmp_path / "i.png", (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    mask = save_png(tmp_path / "m.png", lung_mask(64, 64).astype(np.uint16) * 257)
    img, msk = load_pair(image, mask, size=32)
    assert img.max() >= 250 and img.min() <= 5
    assert torch.equal(msk, torch.from_numpy(lung_mask(64, 64) > 127)[::2, ::2])


def test_huge_image_is_refused_by_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    path = huge_png(tmp_path / "bomb.png", 8000, 8000)  # 64 Mpx decoded, about 60 kB on disk
    assert path.stat().st_size < 1_000_000

    def no_decoding(*_a, **_k):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError, match=r"bomb\.png.*8000x8000.*limit"):
        read_gray(path)


def test_pixel_limit_is_a_setting_that_applies_to_every_image(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"small\.png.*11x11.*100-pixel limit"):
        read_gray(save_png(tmp_path / "small.png", np.zeros((11, 11), np.uint8)))


def test_pillow_decompression_bomb_error_is_reported_as_a_data_error(tmp_path, monkeypatch):
    # Pillow has its own guard; if it fires first, the user still gets a DataError naming the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(DataError, match=r"pillowbomb\.png.*too large"):
        read_gray(save_png(tmp_path / "pillowbomb.png", np.zeros((20, 20), np.uint8)))


def test_huge_dicom_is_refused_from_its_header(tmp_path, monkeypatch):
    from tests.test_data import _dicom_copy

    monkeypatch.setattr(data_module, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(DataError, match=r"big\.dcm.*1841x1955.*limit"):
        read_gray(_dicom_copy(tmp_path / "big.dcm"))


def test_dicom_without_pixel_data_is_refused_naming_the_file(tmp_path):
    from tests.test_data import _dicom_copy

    path = _dicom_copy(tmp_path / "nopixels.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError, match=r"nopixels\.dcm.*no readable pixel data"):
        read_gray(path)


def test_non_dicom_bytes_named_dcm_are_refused(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"definitely not DICOM" * 10)
    with pytest.raises(DataError, match=r"fake\.dcm"):
        read_gray(path)


def test_non_ascii_and_space_containing_file_names_load(make_database):
    root = make_database(per_class=2)
    for cls in CLASSES:
        for sub in ("images", "masks"):
            (root / cls / sub / f"{cls}-1.png").rename(root / cls / sub / f"{cls} Röntgen 肺 [1].png")
    pairs, _ = scan_dataset(root)
    split = make_split(pairs, SplitSizes(train=2, val=0, test=0), seed=0)
    data = load_entries(root, split["train"], size=32)
    assert len(data) == 8 and data.skipped == []
    assert sum("Röntgen 肺 [1]" in name for name in data.names) == 4


# --------------------------------------------------------------------------- layout


def test_missing_data_path_is_refused_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*does not exist"):
        scan_dataset(tmp_path / "nowhere")


def test_a_file_as_data_path_is_refused(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan_dataset(tmp_path / "file.txt")


def test_missing_masks_folder_is_refused_naming_it(make_database):
    root = make_database(per_class=2)
    for f in (root / "Normal" / "masks").iterdir():
        f.unlink()
    (root / "Normal" / "masks").rmdir()
    with pytest.raises(DataError, match=r"Normal/masks.*folder is missing"):
        scan_dataset(root)


def test_image_without_mask_is_refused_naming_the_image(make_database):
    root = make_database(per_class=2)
    (root / "COVID" / "masks" / "COVID-2.png").unlink()
    with pytest.raises(DataError, match=r"COVID-2\.png.*no lung mask"):
        scan_dataset(root)


def test_skip_bad_lists_images_without_mask_and_goes_on(make_database):
    root = make_database(per_class=3)
    (root / "COVID" / "masks" / "COVID-2.png").unlink()
    pairs, skipped = scan_dataset(root, skip_bad=True)
    assert len(pairs["COVID"]) == 2
    assert len(skipped) == 1 and "COVID-2.png" in skipped[0]


def test_skip_bad_list_is_saved_in_the_run_split(make_database, tmp_path):
    root = make_database(per_class=4)
    (root / "Normal" / "masks" / "Normal-3.png").unlink()
    spec = config.FolderSpec(path=str(root), size=32, train=1, val=1, test=1, skip_bad=True)
    run = run_data.new_run(tmp_path / "run", spec, TrainConfig(epochs=1), RefineConfig(epochs=1))
    assert any("Normal-3.png" in s for s in files.read_json(run.file(runs.SPLIT))["skipped"])


def test_a_file_whose_name_only_starts_like_the_image_is_never_its_mask(make_database):
    """Masks match by exact name: ``Normal-1.old.png`` is not the mask of ``Normal-1.png``."""
    root = make_database(per_class=1)
    masks = root / "Normal" / "masks"
    (masks / "Normal-1.png").rename(masks / "Normal-1.old.png")
    with pytest.raises(DataError, match=r"Normal-1\.png: no lung mask with the same name"):
        load_entries(root, [(2, "Normal/images/Normal-1.png")], size=32)
    with pytest.raises(DataError, match=r"Normal-1\.png: no lung mask"):
        scan_dataset(root)


def test_two_possible_masks_and_none_of_the_exact_name_is_refused_naming_both(make_database):
    root = make_database(per_class=1)
    masks = root / "COVID" / "masks"
    (masks / "COVID-1.png").rename(masks / "COVID-1.jpeg")
    save_png(masks / "COVID-1.jpg", lung_mask(256, 256))
    with pytest.raises(DataError, match=r"COVID-1\.png: several files .* could be its lung mask \(COVID-1\.jpeg, COVID-1\.jpg\)"):
        scan_dataset(root)


@pytest.mark.parametrize("kind", ["empty", "full"])
def test_an_empty_or_full_mask_is_refused_naming_it(tmp_path, kind):
    image = save_png(tmp_path / "x.png", np.zeros((32, 32), np.uint8))
    mask = save_png(tmp_path / "m.png", np.full((32, 32), 0 if kind == "empty" else 255, np.uint8))
    with pytest.raises(DataError, match=r"m\.png: lung mask (is empty|covers the whole image)"):
        load_pair(image, mask, size=32)


def test_an_empty_mask_is_skipped_and_listed_in_split_json_with_skip_bad(make_database, tmp_path):
    root = make_database(per_class=3)  # a split of 1 + 1 + 1 takes every image, the bad one too
    save_png(root / "Lung_Opacity" / "masks" / "Lung_Opacity-2.png", np.zeros((256, 256), np.uint8))
    spec = config.FolderSpec(path=str(root), size=32, train=1, val=1, test=1, skip_bad=True)
    run = run_data.new_run(tmp_path / "run", spec, TrainConfig(epochs=1), RefineConfig(epochs=1))
    split = files.read_json(run.file(runs.SPLIT))
    listed = [s for s in split["skipped"] if "Lung_Opacity-2.png: lung mask is empty" in s]
    used = [rel for name in ("train", "val", "test") for _, rel in split[name]]
    assert listed and "Lung_Opacity/images/Lung_Opacity-2.png" not in used
    assert len(run_data.load_data(run)["train"]) == len(split["train"])


def test_mask_whose_aspect_ratio_differs_is_refused_naming_the_mask(tmp_path):
    image = save_png(tmp_path / "images" / "x.png", np.zeros((299, 299), np.uint8))
    mask = save_png(tmp_path / "masks" / "x.png", lung_mask(256, 128))
    with pytest.raises(DataError, match=r"masks/x\.png.*128x256.*299x299"):
        load_pair(image, mask, size=32)


def test_mask_at_another_resolution_with_the_same_aspect_ratio_is_accepted(tmp_path):
    image = save_png(tmp_path / "x.png", np.zeros((299, 299), np.uint8))
    mask = save_png(tmp_path / "m.png", lung_mask(256, 256))
    _, msk = load_pair(image, mask, size=32)
    assert msk.any()


def test_mismatched_mask_is_skipped_and_listed_with_skip_bad(make_database):
    root = make_database(per_class=2)
    save_png(root / "COVID" / "masks" / "COVID-1.png", lung_mask(100, 256))
    pairs, _ = scan_dataset(root)
    entries = make_split(pairs, SplitSizes(train=2, val=0, test=0), seed=0)["train"]
    with pytest.raises(DataError, match=r"COVID-1\.png"):
        load_entries(root, entries, size=32)
    loaded = load_entries(root, entries, size=32, skip_bad=True)
    assert len(loaded) == 7
    assert len(loaded.skipped) == 1 and "COVID-1.png" in loaded.skipped[0]


def test_unreadable_image_is_skipped_and_listed_with_skip_bad(make_database):
    root = make_database(per_class=2)
    (root / "Normal" / "images" / "Normal-2.png").write_bytes(b"")
    pairs, _ = scan_dataset(root)
    entries = make_split(pairs, SplitSizes(train=2, val=0, test=0), seed=0)["train"]
    with pytest.raises(DataError, match=r"Normal-2\.png.*empty"):
        load_entries(root, entries, size=32)
    loaded = load_entries(root, entries, size=32, skip_bad=True)
    assert [s for s in loaded.skipped if "Normal-2.png" in s]
    assert "Normal/images/Normal-2.png" not in loaded.names


def test_empty_class_folder_is_refused_naming_it(make_database):
    root = make_database(per_class=2)
    for sub in ("images", "masks"):
        for f in (root / "Lung_Opacity" / sub).iterdir():
            f.unlink()
    with pytest.raises(DataError, match=r"Lung_Opacity/images.*no images"):
        scan_dataset(root)


def test_unknown_class_folder_is_refused_naming_it(make_database):
    root = make_database(per_class=2)
    (root / "Tuberculosis" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"unknown class folder.*'Tuberculosis'"):
        scan_dataset(root)


def test_missing_class_folder_is_refused_naming_it(make_database):
    root = make_database(per_class=2)
    (root / "COVID").rename(root / ".COVID-hidden")
    with pytest.raises(DataError, match=r"missing class folder.*'COVID'"):
        scan_dataset(root)


def test_data_set_smaller_than_the_split_is_refused_with_the_numbers(make_database):
    pairs, _ = scan_dataset(make_database(per_class=3))
    with pytest.raises(DataError, match=r"'COVID' has 3 usable images, fewer than the 4"):
        make_split(pairs, SplitSizes(train=2, val=1, test=1), seed=0)


def test_new_run_on_a_bad_folder_writes_no_run(tmp_path):
    with pytest.raises(DataError):
        run_data.new_run(tmp_path / "run", config.FolderSpec(path=str(tmp_path / "missing")), TrainConfig(), RefineConfig())
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- checkpoints


def _saved(tmp_path: Path, model: torch.nn.Module, name: str = "ckpt.pt", **meta) -> Path:
    path = tmp_path / name
    checkpoints.save_checkpoint(path, model.state_dict(), meta)
    return path


def test_checkpoint_for_another_number_of_classes_is_refused(tmp_path, model4):
    path = _saved(tmp_path, build_model(num_classes=3))
    with pytest.raises(errors.CheckpointError, match=r"ckpt\.pt: checkpoint has 3 classes, the model has 4"):
        checkpoints.load_checkpoint(path, model4)


def test_checkpoint_labelled_as_another_architecture_is_refused(tmp_path, model4):
    path = _saved(tmp_path, model4, arch="resnet18")
    with pytest.raises(errors.CheckpointError, match=r"ckpt\.pt.*architecture 'resnet18'"):
        checkpoints.load_checkpoint(path, model4)


def test_weights_of_another_architecture_are_refused_naming_the_keys(tmp_path, model4):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4))
    path = tmp_path / "other.pt"
    checkpoints.save_checkpoint(path, other.state_dict(), {})
    with pytest.raises(errors.CheckpointError, match=r"other\.pt: weights do not fit this model.*features"):
        checkpoints.load_checkpoint(path, model4)


def test_plain_torchvision_state_dict_is_not_taken_for_a_checkpoint(tmp_path, model4):
    path = tmp_path / "plain.pt"
    torch.save(model4.state_dict(), path)
    with pytest.raises(errors.CheckpointError, match=r"plain\.pt: not an eXBL Studio checkpoint"):
        checkpoints.load_checkpoint(path, model4)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path, model4, keep):
    path = _saved(tmp_path, model4)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(errors.CheckpointError, match=r"ckpt\.pt"):
        checkpoints.load_checkpoint(path, model4)


class _RunsCode:
    """Unpickling this object writes a marker file: the kind of payload weights_only must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickled_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, model4):
    live = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_RunsCode(live)))
    assert live.exists(), "the payload must really run code when unpickled unsafely"

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "version": checkpoints.FORMAT_VERSION, "payload": _RunsCode(marker)}, path)
    with pytest.raises(errors.CheckpointError, match=r"evil\.pt: cannot be loaded safely.*could run code.*nothing in it ran"):
        checkpoints.load_checkpoint(path, model4)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_named_pt_is_refused_and_never_runs(tmp_path, model4):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))
    with pytest.raises(errors.CheckpointError, match=r"legacy\.pt: cannot be loaded safely"):
        checkpoints.load_checkpoint(path, model4)
    assert not marker.exists()


def test_checkpoint_from_an_incompatible_format_version_is_refused(tmp_path, model4):
    path = _saved(tmp_path, model4, version=checkpoints.FORMAT_VERSION + 1)
    with pytest.raises(
        errors.CheckpointError, match=rf"version {checkpoints.FORMAT_VERSION + 1}, this tool reads version {checkpoints.FORMAT_VERSION}"
    ):
        checkpoints.load_checkpoint(path, model4)


def test_run_folder_from_an_incompatible_version_is_refused(tmp_path):
    run = runs.create_run(tmp_path / "old", {"data": {}})
    config = files.read_json(run.file(runs.CONFIG))
    files.write_json(run.file(runs.CONFIG), {**config, "version": 0})
    with pytest.raises(errors.RunError, match=r"old: run written by an incompatible version"):
        runs.open_run(run.path)


def test_run_folder_for_another_model_is_refused(tmp_path):
    run = runs.create_run(tmp_path / "other", {"data": {}})
    files.write_json(run.file(runs.CONFIG), {**files.read_json(run.file(runs.CONFIG)), "arch": "resnet50"})
    with pytest.raises(errors.RunError, match=r"another model.*resnet50"):
        runs.open_run(run.path)


def test_run_folder_with_corrupt_config_is_refused_naming_the_file(tmp_path):
    run = runs.create_run(tmp_path / "corrupt", {"data": {}})
    run.file(runs.CONFIG).write_text("{ not json")
    with pytest.raises(errors.RunError, match=r"config\.json: not valid JSON"):
        runs.open_run(run.path)


def test_no_torch_load_in_the_code_base_ever_runs_with_weights_only_false():
    """Every torch.load / hub loader call in the project passes weights_only=True explicitly."""
    loaders = {"load", "load_state_dict_from_url", "get_state_dict"}
    sources = [p for p in REPO.rglob("*.py") if not any(part in {".venv", ".git", "node_modules"} for part in p.parts)]
    calls = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or node.func.attr not in loaders:
                continue
            owner = ast.unparse(node.func.value)
            if node.func.attr == "load" and owner != "torch":
                continue  # json.load, yaml.load and friends
            weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            calls.append((f"{path.relative_to(REPO)}:{node.lineno}", ast.unparse(node)))
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, f"{path}:{node.lineno}: {ast.unparse(node)}"
    assert any("exbl_core/checkpoints.py" in where for where, _ in calls), "the scan must see the checkpoint loader"


# --------------------------------------------------------------------------- the disk refusing a write


def _refuse(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["tempfile.mkstemp", "os.fsync", "os.replace"])
def test_disk_refusing_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, model4, monkeypatch, where):
    path = _saved(tmp_path, model4, epoch=1)
    before = path.read_bytes()
    module, name = where.split(".")
    monkeypatch.setattr({"tempfile": tempfile, "os": os}[module], name, _refuse)
    with pytest.raises(errors.WriteError, match=r"ckpt\.pt: could not be written \(No space left on device\)"):
        checkpoints.save_checkpoint(path, model4.state_dict(), {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert checkpoints.load_checkpoint(path, model4)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"], "no temporary file is left behind"


def test_disk_refusing_a_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"a": 1})
    monkeypatch.setattr(os, "replace", _refuse)
    with pytest.raises(errors.WriteError, match=r"metrics\.json"):
        files.write_json(path, {"a": 2})
    monkeypatch.undo()
    assert files.read_json(path) == {"a": 1}


def test_write_error_is_a_run_error_so_the_cli_reports_it_cleanly():
    assert issubclass(errors.WriteError, errors.RunError)


def test_disk_refusing_a_history_append_gives_a_write_error(tmp_path, monkeypatch):
    run = runs.create_run(tmp_path / "run", {"data": {}})
    run.append_history({"type": "epoch_end", "epoch": 1})

    def refuse_open(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("builtins.open", refuse_open)
    with pytest.raises(errors.WriteError, match=r"history\.jsonl.*Read-only"):
        run.append_history({"type": "epoch_end", "epoch": 2})
    monkeypatch.undo()
    assert run.history() == [{"type": "epoch_end", "epoch": 1}]


def test_torn_last_history_line_is_skipped_when_reading(tmp_path):
    run = runs.create_run(tmp_path / "run", {"data": {}})
    run.append_history({"type": "epoch_end", "epoch": 1})
    with open(run.file(runs.HISTORY), "a", encoding="utf-8") as fh:
        fh.write('{"type": "epoch_e')
    assert run.history() == [{"type": "epoch_end", "epoch": 1}]


# --------------------------------------------------------------------------- SIGKILL during a checkpoint write

_WRITER = """
import sys
import torch
torch.set_num_threads(1)
from exbl_core import checkpoints, errors, files, runs
from exbl_core.model import build_model
model = build_model(num_classes=4)
for epoch in range(1, 100000):
    with torch.no_grad():
        model.classifier[-1].bias.fill_(float(epoch))
    checkpoints.save_checkpoint(sys.argv[1], model.state_dict(), {"epoch": epoch})
    print(epoch, flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_while_checkpoints_are_written_leaves_a_loadable_checkpoint(tmp_path, model4, seed):
    """A writer killed after a delay drawn from ``random.Random(seed)``, so a failing kill can be replayed with its seed.

    The delay is reproducible; where inside a write it lands still varies with the machine's speed.
    """
    path = tmp_path / "unrefined.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        first = proc.stdout.readline()
        assert first.strip() == "1", "the writer never finished its first checkpoint"
        time.sleep(random.Random(seed).uniform(0.05, 0.6))  # somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    meta = checkpoints.load_checkpoint(path, model4)
    assert meta["epoch"] >= 1
    assert torch.all(model4.classifier[-1].bias == float(meta["epoch"])), "weights and metadata come from the same write"


def test_split_where_no_image_is_readable_is_refused_even_with_skip_bad(make_database):
    root = make_database(per_class=1)
    for cls in CLASSES:
        (root / cls / "images" / f"{cls}-1.png").write_bytes(b"")
    pairs, _ = scan_dataset(root)
    entries = make_split(pairs, SplitSizes(train=1, val=0, test=0), seed=0)["train"]
    with pytest.raises(DataError, match="none of the 4 images in this split could be read"):
        load_entries(root, entries, size=32, skip_bad=True)
