"""The lung segmenter: the restricted checkpoint reader, the U-Net, and `masks` (docs/design.md, section 13).

Nothing here needs the network or the real sample: checkpoints are made in the test with
``torch.save(..., _use_new_zipfile_serialization=False)``, the old format the published file uses.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from exbl_core import cli, masks, segmenter
from exbl_core.data import DataError
from exbl_core.legacy_checkpoint import LEGACY_MAGIC, CheckpointError, read_state_dict
from tests.conftest import lung_mask, save_png

# --------------------------------------------------------------------------- old-format checkpoints


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)


class PretrainedUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.init_conv, self.center = nn.Conv2d(1, 2, 1), Block()


def legacy_bytes(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """``model`` saved whole, in the old format, with its classes named as the published file names them."""
    fake = types.ModuleType("lung_segmentation")
    for cls in (Block, PretrainedUNet):
        monkeypatch.setattr(cls, "__module__", "lung_segmentation")
        setattr(fake, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "lung_segmentation", fake)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch warns that it cannot keep the classes' source code
        warnings.simplefilter("ignore")
        torch.save(model, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def test_reader_rebuilds_the_state_dict_of_a_whole_model_pickle(monkeypatch):
    torch.manual_seed(0)
    model = PretrainedUNet()
    model.center.bn1.running_mean.uniform_()
    state = read_state_dict(io.BytesIO(legacy_bytes(model, monkeypatch)), segmenter.PICKLED_CLASSES)
    expected = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_reader_refuses_a_global_beyond_tensor_rebuilding_and_runs_nothing(tmp_path):
    """A crafted checkpoint whose model is ``os.system("touch ...")``: refused by name, never called."""
    witness = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {witness}",)

    data = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}, Exploit(), []))
    with pytest.raises(CheckpointError, match=r"refuses the global (os|posix)\.system"):
        read_state_dict(io.BytesIO(data), segmenter.PICKLED_CLASSES)
    assert not witness.exists()


def test_reader_refuses_a_module_class_it_was_not_told_about(monkeypatch):
    data = legacy_bytes(PretrainedUNet(), monkeypatch)
    with pytest.raises(CheckpointError, match=r"refuses the global lung_segmentation\.PretrainedUNet"):
        read_state_dict(io.BytesIO(data), ["torch.nn.modules.conv.Conv2d"])


def test_reader_refuses_truncated_and_foreign_files(monkeypatch):
    data = legacy_bytes(PretrainedUNet(), monkeypatch)
    with pytest.raises(CheckpointError, match="file ends"):
        read_state_dict(io.BytesIO(data[:-10]), segmenter.PICKLED_CLASSES)
    with pytest.raises(CheckpointError, match="magic number"):
        read_state_dict(io.BytesIO(pickle.dumps(123, protocol=2)), segmenter.PICKLED_CLASSES)
    zipped = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(CheckpointError, match="not a readable old-format checkpoint"):
        read_state_dict(io.BytesIO(zipped.getvalue()), segmenter.PICKLED_CLASSES)


def test_conversion_refuses_a_checkpoint_that_is_not_the_lung_unet(monkeypatch):
    with pytest.raises(CheckpointError, match="does not hold the lung U-Net"):
        segmenter.convert_checkpoint(io.BytesIO(legacy_bytes(PretrainedUNet(), monkeypatch)))


# --------------------------------------------------------------------------- the network


def random_unet(lung_everywhere: bool = False) -> segmenter.LungUNet:
    torch.manual_seed(0)
    model = segmenter.LungUNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if lung_everywhere:
        with torch.no_grad():
            model.out.weight.zero_()
            model.out.bias.copy_(torch.tensor([-1.0, 1.0]))
    return model


def test_folding_batch_norm_keeps_the_output():
    model = random_unet()
    x = torch.rand(2, 1, 64, 64) - 0.5
    with torch.inference_mode():
        before = model(x)
        for block in (model.center, model.dec5, model.dec4, model.dec3, model.dec2, model.dec1):
            block.fold()
        after = model(x.contiguous(memory_format=torch.channels_last))
    assert before.shape == (2, 64, 64)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_load_segmenter_checks_the_recorded_sha256(tmp_path):
    path = tmp_path / "lung-unet.pt"
    torch.save(random_unet().state_dict(), path)
    with pytest.raises(CheckpointError, match="is not the recorded"):
        segmenter.load_segmenter(path)
    model = segmenter.load_segmenter(path, segmenter.sha256_file(path))
    assert isinstance(model.center.bn1, nn.Identity)
    with pytest.raises(CheckpointError, match="not found; run `make real-sample`"):
        segmenter.load_segmenter(tmp_path / "absent.pt")


# --------------------------------------------------------------------------- masks


@pytest.fixture
def gallery_folder(tmp_path: Path) -> Path:
    """Two classes that are not the paper's, one image with a mask already, two without."""
    root = tmp_path / "sample"
    save_png(root / "Child" / "images" / "a.png", (np.random.default_rng(0).random((80, 64)) * 255).astype(np.uint8))
    save_png(root / "Child" / "images" / "b.jpg", np.full((48, 48), 90, np.uint8))
    save_png(root / "Adult" / "images" / "c.png", np.full((64, 64), 120, np.uint8))
    save_png(root / "Adult" / "masks" / "c.png", lung_mask(64, 64))
    return root


def test_masks_are_written_only_where_missing_named_as_their_images(gallery_folder):
    kept = (gallery_folder / "Adult" / "masks" / "c.png").read_bytes()
    images, total = masks.without_masks(gallery_folder)
    assert total == 3 and sorted(p.name for p in images) == ["a.png", "b.jpg"]
    todo = masks.load_images(images, 64)
    calls = []
    written, empty = masks.write_masks(random_unet(lung_everywhere=True), todo, batch=2, on_batch=calls.append)
    assert calls == [2] and empty == []
    assert sorted(p.relative_to(gallery_folder).as_posix() for p in written) == ["Child/masks/a.png", "Child/masks/b.png"]
    with Image.open(gallery_folder / "Child" / "masks" / "a.png") as im:
        assert im.size == (64, 80)  # the image's own size
    assert (gallery_folder / "Adult" / "masks" / "c.png").read_bytes() == kept
    assert masks.without_masks(gallery_folder)[0] == []


def test_masks_never_replace_a_mask_that_appeared_meanwhile(gallery_folder):
    todo = masks.load_images(masks.without_masks(gallery_folder)[0], 64)
    save_png(gallery_folder / "Child" / "masks" / "a.png", lung_mask(80, 64))
    before = (gallery_folder / "Child" / "masks" / "a.png").read_bytes()
    written, _ = masks.write_masks(random_unet(lung_everywhere=True), todo)
    assert [p.name for p in written] == ["b.png"]
    assert (gallery_folder / "Child" / "masks" / "a.png").read_bytes() == before


def test_masks_cli_bad_input_is_one_line_and_writes_nothing(gallery_folder, tmp_path, capsys):
    (gallery_folder / "Child" / "images" / "broken.png").write_bytes(b"not an image")
    assert cli.main(["masks", "--data", str(gallery_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.png" in err and "\n" not in err
    assert not (gallery_folder / "Child" / "masks").exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["masks", "--data", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert cli.main(["masks", "--data", str(gallery_folder), "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_an_image_the_segmenter_finds_no_lung_in_gets_no_mask(gallery_folder):
    model = random_unet(lung_everywhere=True)
    with torch.no_grad():
        model.out.bias.copy_(torch.tensor([1.0, -1.0]))
    written, empty = masks.write_masks(model, masks.load_images(masks.without_masks(gallery_folder)[0], 64))
    assert written == [] and sorted(p.name for p in empty) == ["a.png", "b.jpg"]
    with pytest.raises(DataError, match="broken"):
        (gallery_folder / "Child" / "images" / "broken.png").write_bytes(b"")
        masks.load_images(masks.without_masks(gallery_folder)[0], 64)


def test_bf16_logits_come_back_in_fp32_and_agree_in_sign_with_fp32():
    model = random_unet()
    x = torch.rand(1, 1, 64, 64) - 0.5
    full, half = segmenter.lung_logits(model, x), segmenter.lung_logits(model, x, bf16=True)
    assert half.dtype == torch.float32 and half.shape == full.shape == (1, 64, 64)
    assert float(((half > 0) == (full > 0)).float().mean()) > 0.95
