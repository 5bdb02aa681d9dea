"""A folder of real radiographs of any classes: loaded for looking, refused for training, shown in the app.

The folders here are made up (no network, no real sample needed); tests/test_real_sample.py
runs the same path on the 17 real radiographs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from exbl_core import gallery
from exbl_core.data import DataError, load_gallery, scan_dataset
from studio import pages
from studio.cache import RUNS_DIR_ENV
from studio.gallery import FOLDER_KEY
from studio.jobs import get_runner
from tests.conftest import lung_mask, save_png

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes that are not the paper's: two children with lung masks, an adult without one."""
    root = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    for cls, name, mask in (("Child", "k1.png", True), ("Child", "k2.jpg", True), ("Adult", "a1.png", False)):
        save_png(root / cls / "images" / name, (rng.random((120, 100)) * 255).astype(np.uint8))
        if mask:
            save_png(root / cls / "masks" / f"{Path(name).stem}.png", lung_mask(120, 100))
    return root


def test_a_folder_of_other_classes_loads_for_looking_and_is_refused_for_training(folder):
    g = load_gallery(folder, 64)
    assert g.classes == ["Adult", "Child"] and len(g) == 3
    assert g.images.shape == (3, 1, 64, 64) and g.masks.shape == (3, 64, 64)
    assert g.has_mask.tolist() == [False, True, True] and not bool(g.masks[0].any())
    assert [p.name for p in g.paths] == ["a1.png", "k1.png", "k2.jpg"]
    assert g.mask_paths[0] is None and g.mask_paths[2].name == "k2.png"  # matched by name, another extension
    with pytest.raises(DataError, match="unknown class folder.*'Adult', 'Child'.*for inspection only"):
        scan_dataset(folder)


def test_an_empty_gallery_folder_is_one_clear_error(tmp_path):
    (tmp_path / "Child" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_gallery(tmp_path, 64)


def test_the_shoulder_boxes_sit_above_and_outside_the_lungs():
    mask = lung_mask(400, 300).astype(bool)
    rows, cols = np.nonzero(mask)
    boxes = gallery.shoulder_boxes(mask)
    (t0, b0, l0, r0), (t1, b1, l1, r1) = boxes
    assert t0 == t1 and b0 == b1 and t0 < rows.min() < b0  # from above the apices down beside them
    assert l0 < cols.min() < r0 and l1 < cols.max() < r1  # across each lung's outer edge
    assert r0 <= 150 <= l1  # one per side of the midline
    assert all(0 <= t < b <= 400 and 0 <= lft < rgt <= 300 for t, b, lft, rgt in boxes)


def test_display_stretch_spans_the_range_of_a_washed_out_image():
    gray = np.linspace(0.4, 0.6, 10_000, dtype=np.float32).reshape(100, 100)
    shown = gallery.for_display(gray)
    assert shown.min() == 0.0 and shown.max() == 1.0


# --------------------------------------------------------------------------- the app


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv(RUNS_DIR_ENV, str(path))
    yield path
    get_runner().cancel()
    assert get_runner().wait(60)


def test_data_page_opens_a_folder_as_a_gallery(runs_dir, folder):
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.switch_page(pages.DATA).run()
    at.session_state[FOLDER_KEY] = str(folder)
    at.toggle(key="gallery-on").set_value(True).run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert table["class"].tolist() == ["Adult", "Child"] and table["with lung masks"].tolist() == [0, 2]
    shares = [i.proto.imgs[0].caption.split(" · ")[-1] for i in at.image]
    assert shares[0] == "no lung mask yet"
    expected = 100 * (lung_mask(120, 100) > 0).mean()
    assert shares[1].startswith("lungs ") and abs(int(shares[1].split()[1].rstrip("%")) - expected) <= 2
    assert "not the paper's four" in " ".join(c.value for c in at.caption)


def test_explore_shows_a_runs_maps_on_the_gallery_and_says_it_is_off_its_domain(runs_dir, folder, tiny_run):
    shutil.copytree(tiny_run, runs_dir / "tiny", ignore=shutil.ignore_patterns(".lock"))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.session_state[FOLDER_KEY] = str(folder)
    at.switch_page(pages.EXPLORE).run()
    at.sidebar.toggle(key="gallery-explore").set_value(True).run()
    assert not at.exception
    assert any("off its domain" in w.value for w in at.warning)
    assert "3 real radiographs" in " ".join(c.value for c in at.caption)
    assert any("the shoulders" in h.value for h in at.subheader)
    shown = [i.proto.imgs[0].caption for i in at.image]
    assert len(shown) == 3 * 2 + 2  # each image with its map, and the shoulders of the one class with masks
    assert sum("predicted" in c and "off its domain" in c for c in shown) == 3
    assert shown[-2:] == ["Child · image left", "Child · image right"]


def test_explain_writes_a_gallery_figure_and_refuses_an_image_without_a_mask(folder, tiny_run, tmp_path, capsys):
    from exbl_core import cli

    out = tmp_path / "real.png"
    assert (
        cli.main(
            ["explain", "--run", str(tiny_run), "--data", str(folder), "--images", "1", "2", "--explainers", "gradcam", "--out", str(out)]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["explain", "--run", str(tiny_run), "--data", str(folder), "--images", "0", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "a1.png: has no lung mask" in err and not (tmp_path / "x.png").exists()
