"""Loading real data: the COVID-19 Radiography Database layout, splits, and DICOM (docs/design.md §3).

Bad input of every kind is in test_faults.py; this file checks that good input loads
correctly and that the split is seeded and reproducible.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from exbl_core import config, files, run_data, runs
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import CLASSES, DataError, SplitSizes, load_entries, load_pair, make_split, read_gray, scan_dataset
from exbl_core.synthetic import SyntheticConfig
from tests.conftest import lung_mask, save_png

DICOM_FILE = Path(get_testdata_file("RG1_UNCR.dcm"))  # a real chest radiograph, MONOCHROME1, 15 bits stored


# --------------------------------------------------------------------------- the PNG layout


def test_scan_pairs_every_image_with_its_mask_in_class_order(make_database):
    root = make_database(per_class=3)
    pairs, skipped = scan_dataset(root)
    assert list(pairs) == list(CLASSES)
    assert skipped == []
    for cls, found in pairs.items():
        assert len(found) == 3
        for image, mask in found:
            assert image.parent == root / cls / "images"
            assert mask == root / cls / "masks" / image.name


def test_the_viral_pneumonia_folder_name_contains_a_space(make_database):
    pairs, _ = scan_dataset(make_database())
    assert pairs["Viral Pneumonia"][0][0].name.startswith("Viral Pneumonia-")


def test_split_takes_the_requested_number_of_images_per_class(make_database):
    pairs, _ = scan_dataset(make_database(per_class=4))
    split = make_split(pairs, SplitSizes(train=2, val=1, test=1), seed=0)
    for name, per_class in (("train", 2), ("val", 1), ("test", 1)):
        labels = [label for label, _ in split[name]]
        assert sorted(labels) == sorted(list(range(4)) * per_class)


def test_split_never_puts_one_image_in_two_splits(make_database):
    pairs, _ = scan_dataset(make_database(per_class=4))
    split = make_split(pairs, SplitSizes(train=2, val=1, test=1), seed=0)
    files = [rel for name in ("train", "val", "test") for _, rel in split[name]]
    assert len(files) == len(set(files)) == 16


def test_split_is_reproducible_for_a_seed_and_changes_with_it(make_database):
    pairs, _ = scan_dataset(make_database(per_class=6))
    sizes = SplitSizes(train=2, val=1, test=1)
    assert make_split(pairs, sizes, seed=7) == make_split(pairs, sizes, seed=7)
    assert any(make_split(pairs, sizes, seed=s) != make_split(pairs, sizes, seed=7) for s in range(5))


def test_entries_load_at_the_training_size_as_uint8_images_and_bool_masks(make_database):
    root = make_database(per_class=3)
    pairs, _ = scan_dataset(root)
    split = make_split(pairs, SplitSizes(train=3, val=0, test=0), seed=0)
    data = load_entries(root, split["train"], size=64)
    assert data.images.shape == (12, 1, 64, 64) and data.images.dtype == torch.uint8
    assert data.masks.shape == (12, 64, 64) and data.masks.dtype == torch.bool
    assert data.labels.tolist() == [label for label, _ in split["train"]]
    assert data.names == [rel for _, rel in split["train"]]
    assert data.skipped == []


def test_a_299px_image_with_a_3_channel_256px_mask_gives_the_mask_at_the_image_size(tmp_path):
    image = save_png(tmp_path / "x.png", np.full((299, 299), 128, np.uint8))
    mask = lung_mask(256, 256)
    mask_file = save_png(tmp_path / "x_mask.png", np.stack([mask] * 3, -1))
    img, msk = load_pair(image, mask_file, size=64)
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask > 127)[None, None].float(), size=(64, 64), mode="nearest")[0, 0]
    assert torch.equal(msk, expected.bool())
    assert img.shape == (1, 64, 64)
    assert int(img.float().mean().round()) == 128


def test_rgb_images_load_as_grayscale(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601 luma 0.299
    path = save_png(tmp_path / "red.png", rgb)
    assert read_gray(path) == pytest.approx(np.full((32, 32), 76 / 255), abs=1 / 255)


def test_mask_threshold_is_the_middle_of_the_8_bit_range(tmp_path):
    mask = np.array([[0, 127], [128, 255]], np.uint8)
    image = save_png(tmp_path / "i.png", np.zeros((2, 2), np.uint8))
    _, msk = load_pair(image, save_png(tmp_path / "m.png", mask), size=2)
    assert msk.tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("top", [1, 255, 65535])
def test_masks_are_binarised_at_half_their_own_maximum(tmp_path, top):
    """A mask stored as 0/1 (or 16-bit) marks the same lungs as one stored as 0/255."""
    lungs = lung_mask(64, 64) > 0
    mask = save_png(tmp_path / "m.png", (lungs * top).astype(np.uint16 if top > 255 else np.uint8))
    image = save_png(tmp_path / "i.png", np.zeros((64, 64), np.uint8))
    _, msk = load_pair(image, mask, size=64)
    assert torch.equal(msk, torch.from_numpy(lungs))


def test_the_mask_with_the_images_exact_name_wins_over_other_extensions(make_database):
    root = make_database(per_class=1)
    masks = root / "Normal" / "masks"
    save_png(masks / "Normal-1.jpg", 255 - lung_mask(256, 256))  # another file of the same stem: not this image's mask
    pairs, _ = scan_dataset(root)
    assert pairs["Normal"][0][1] == masks / "Normal-1.png"
    loaded = load_entries(root, [(2, "Normal/images/Normal-1.png")], size=32)
    assert torch.equal(loaded.masks[0], load_pair(root / "Normal/images/Normal-1.png", masks / "Normal-1.png", 32)[1])


def test_a_dicom_image_takes_the_png_mask_of_the_same_name(make_database):
    root = make_database(per_class=1)
    shutil.copy(DICOM_FILE, root / "COVID" / "images" / "COVID-1.dcm")
    (root / "COVID" / "images" / "COVID-1.png").unlink()
    pairs, _ = scan_dataset(root)
    assert pairs["COVID"] == [(root / "COVID/images/COVID-1.dcm", root / "COVID/masks/COVID-1.png")]


def test_folder_data_set_goes_through_a_run_folder(make_database, tmp_path):
    root = make_database(per_class=4)
    spec = config.FolderSpec(path=str(root), size=32, train=2, val=1, test=1, seed=3)
    run = run_data.new_run(tmp_path / "run", spec, TrainConfig(epochs=1), RefineConfig(epochs=1))
    saved = files.read_json(run.file(runs.SPLIT))
    assert saved["source"] == "folder"
    assert len(saved["train"]) == 8 and len(saved["val"]) == 4 and len(saved["test"]) == 4
    assert run_data.split_names(run) == ("train", "val", "test")
    data = run_data.load_data(run)
    assert data["train"].images.shape == (8, 1, 32, 32)
    assert data["test"].labels.tolist() == [label for label, _ in saved["test"]]


def test_folder_run_has_no_shortcut_test_split(make_database, tmp_path):
    spec = config.FolderSpec(path=str(make_database(per_class=3)), size=32, train=1, val=1, test=1)
    run = run_data.new_run(tmp_path / "run", spec, TrainConfig(epochs=1), RefineConfig(epochs=1))
    with pytest.raises(DataError, match="shortcut_test"):
        run_data.load_split(run, "shortcut_test")


def test_synthetic_run_records_its_labels_and_confounders_in_split_json(tmp_path):
    cfg = SyntheticConfig(size=16, n_train=2, n_val=1, n_test=1)
    run = run_data.new_run(tmp_path / "run", cfg, TrainConfig(epochs=1), RefineConfig(epochs=1))
    saved = files.read_json(run.file(runs.SPLIT))
    assert saved["source"] == "synthetic"
    train = run_data.load_split(run, "train")
    assert saved["train"]["labels"] == train.labels.tolist()
    assert saved["train"]["child"] == train.child.tolist()


# --------------------------------------------------------------------------- DICOM


def _dicom_copy(path: Path, photometric: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DICOM_FILE, path)
    if photometric is not None:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = photometric
        ds.save_as(path)
    return path


def test_monochrome1_dicom_is_inverted_and_scaled_by_its_bits_stored(tmp_path):
    ds = pydicom.dcmread(DICOM_FILE)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    raw = ds.pixel_array.astype(np.float32) / (2**15 - 1)
    pixels = read_gray(_dicom_copy(tmp_path / "a.dcm"))
    assert pixels.shape == (1955, 1841)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    np.testing.assert_allclose(pixels, 1.0 - raw, atol=1e-6)


def test_monochrome2_copy_of_the_same_dicom_is_not_inverted(tmp_path):
    inverted = read_gray(_dicom_copy(tmp_path / "m1.dcm"))
    plain = read_gray(_dicom_copy(tmp_path / "m2.dcm", photometric="MONOCHROME2"))
    np.testing.assert_allclose(inverted + plain, 1.0, atol=1e-6)


def test_monochrome1_air_is_dark_after_loading(tmp_path):
    # In MONOCHROME1 high values are dark: the border (air, raw value high) must come out dark.
    pixels = read_gray(_dicom_copy(tmp_path / "a.dcm"))
    centre = pixels[800:1100, 800:1100].mean()
    corner = pixels[:100, :100].mean()
    assert corner < centre


def test_dicom_layout_loads_through_scan_split_and_load_entries(tmp_path):
    root = tmp_path / "dicom_db"
    mask = lung_mask(195, 184)  # the DICOM is 1841x1955: same aspect ratio, another resolution
    for cls in CLASSES:
        _dicom_copy(root / cls / "images" / f"{cls}-1.dcm")
        save_png(root / cls / "masks" / f"{cls}-1.png", mask)
    pairs, _ = scan_dataset(root)
    split = make_split(pairs, SplitSizes(train=1, val=0, test=0), seed=0)
    data = load_entries(root, split["train"], size=48)
    assert data.images.shape == (4, 1, 48, 48)
    assert data.masks.any()
    assert data.images.float().std() > 20  # scaled into the 8-bit range, not crushed to one gray level
    assert torch.equal(data.images[0], data.images[3])  # the same file in every class loads identically


def test_12_bit_dicom_is_scaled_by_4095(tmp_path):
    path = _dicom_copy(tmp_path / "12bit.dcm", photometric="MONOCHROME2")
    ds = pydicom.dcmread(path)
    twelve = (ds.pixel_array >> 3).astype(np.uint16)  # 15 bits stored -> 12
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = twelve.tobytes()
    ds.save_as(path)
    np.testing.assert_allclose(read_gray(path), twelve / 4095.0, atol=1e-6)
