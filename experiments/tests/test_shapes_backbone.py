"""experiments.shapes_backbone: a backbone pretrained on formula-driven shapes, which ``--weights PATH`` accepts."""

from __future__ import annotations

import pytest
import torch

from exbl_core import weights
from exbl_core.model import FROZEN_BLOCKS, build_model


@pytest.mark.slow
@pytest.mark.parametrize(("target_kind", "stride"), [("centre", "32"), ("presence", "16")])
def test_the_shapes_pretraining_writes_a_backbone_that_runs_can_start_from(tmp_path, monkeypatch, target_kind, stride):
    """The lever of experiments/shapes_backbone.py must give a file ``--weights PATH`` accepts, trained, not fresh."""
    from experiments import shapes_backbone

    out = tmp_path / "shapes.pt"
    argv = ["shapes_backbone", "--out", str(out), "--steps", "2", "--target", target_kind, "--output-stride", stride]
    monkeypatch.setattr("sys.argv", argv)
    shapes_backbone.main()
    features, sha256 = weights.load_backbone(out)
    torch.manual_seed(0)  # the script's default seed: these are the very weights it started from
    fresh = build_model(output_stride=int(stride)).features.state_dict()
    trained = [
        k
        for k, v in features.items()
        if "running_" not in k and "num_batches" not in k and not torch.equal(v, fresh[k.removeprefix("features.")])
    ]
    assert trained  # weights, not only BatchNorm statistics, moved
    assert weights.resolve(out, real_data=False).frozen_blocks == FROZEN_BLOCKS
    with pytest.raises(SystemExit):  # a second run never replaces the file
        shapes_backbone.main()
    assert weights.load_backbone(out)[1] == sha256


def test_the_shapes_targets_mark_the_cells_that_hold_each_shape():
    """Each target is the 4x4 grid of the final feature map per kind; presence marks more cells than centres."""
    import numpy as np

    from experiments.shapes_backbone import shape_image

    for kind in ("centre", "presence"):
        image, target = shape_image(128, 4, np.random.default_rng(3), kind)
        assert image.shape == (128, 128) and 0 <= image.min() and image.max() <= 1
        assert target.shape == (8, 4, 4) and 1 <= target.sum() <= 8 * 16
    _, centre = shape_image(128, 4, np.random.default_rng(3), "centre")
    _, presence = shape_image(128, 4, np.random.default_rng(3), "presence")
    assert presence.sum() > centre.sum()  # a shape covers at least the cell of its centre, often its neighbours too
