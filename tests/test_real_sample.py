"""The real sample: pinned downloads checked by SHA-256, and the real path on real files.

The download checks run without the network (pip is replaced by a stand-in). The tests on the
17 real radiographs need ``make real-sample`` (which CI runs first) and skip, saying so, without it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from exbl_core import real_sample
from exbl_core.data import DataError, load_gallery, read_gray, scan_dataset, scan_gallery

SAMPLE = real_sample.DEFAULT_OUT
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "SOURCES.md").is_file(), reason=f"{SAMPLE} is absent: run `make real-sample` (CI does) to test on real radiographs"
)
WHEEL = real_sample.PNEUMONIA_WHEEL


def fake_pip(content: bytes):
    """A stand-in for ``pip download`` that saves ``content`` as the archive."""

    def run(cmd, **_kw):
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / WHEEL.file).write_bytes(content)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_a_download_with_another_sha256_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(real_sample.subprocess, "run", fake_pip(b"not the wheel"))
    with pytest.raises(real_sample.SampleError, match=rf"{WHEEL.file}: downloaded file's SHA-256 \w+ is not the pinned"):
        real_sample.fetch(WHEEL, tmp_path, say=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_archive_is_checked_every_time(tmp_path, monkeypatch):
    (tmp_path / WHEEL.file).write_bytes(b"changed since")
    monkeypatch.setattr(real_sample.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(real_sample.SampleError, match="is not the pinned"):
        real_sample.fetch(WHEEL, tmp_path)
    assert (tmp_path / WHEEL.file).read_bytes() == b"changed since"  # not ours to delete


def test_a_failed_pip_says_why_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(real_sample.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network\n"))
    with pytest.raises(real_sample.SampleError, match="pip download pneumonia-model-package==0.3.0 failed \\(ERROR: no network\\)"):
        real_sample.fetch(WHEEL, tmp_path, say=lambda _: None)


def test_real_sample_cli_bad_hash_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from exbl_core import cli

    monkeypatch.setattr(real_sample, "DOWNLOADS", tmp_path / "downloads")
    monkeypatch.setattr(real_sample.subprocess, "run", fake_pip(b"tampered"))
    assert cli.main(["real-sample", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and WHEEL.file in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- on the real files


@needs_sample
def test_the_loader_reads_all_17_real_radiographs_with_their_masks_by_name():
    found = scan_gallery(SAMPLE)
    assert sorted(found) == [real_sample.ADULT, real_sample.CHILD_PNEUMONIA, real_sample.CHILD_NORMAL]
    assert sum(map(len, found.values())) == 17
    for pairs in found.values():
        for image, mask in pairs:
            assert mask is not None and mask.parent == image.parent.parent / "masks" and mask.stem == image.stem
    gallery = load_gallery(SAMPLE, 128)
    assert len(gallery) == 17 and bool(gallery.has_mask.all())
    cover = gallery.masks.float().mean((1, 2))
    assert float(cover.min()) > 0.15 and float(cover.max()) < 0.55  # two lungs, not an empty or full mask


@needs_sample
def test_the_monochrome1_dicom_reads_with_dark_lungs_and_a_bright_mediastinum():
    image = SAMPLE / real_sample.ADULT / "images" / real_sample.ADULT_FILE
    gray = read_gray(image)
    lungs = read_gray(SAMPLE / real_sample.ADULT / "masks" / "RG1_UNCR.png") > 0.5
    assert gray.shape == lungs.shape == (1955, 1841)
    h, w = gray.shape
    middle = np.zeros_like(lungs)
    middle[h // 4 : h // 2, int(w * 0.46) : int(w * 0.54)] = True  # the mediastinum between the lungs
    assert gray[lungs].mean() + 0.1 < gray[middle & ~lungs].mean()


@needs_sample
def test_training_and_scoring_refuse_the_real_sample_in_one_line():
    with pytest.raises(DataError, match="training and scoring need exactly 'COVID'.*inspection only"):
        scan_dataset(SAMPLE)
