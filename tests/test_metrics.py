"""Metrics (docs/design.md §7) against hand-built CAMs and masks whose answers are known."""

from __future__ import annotations

import pytest
import torch

from exbl_core.data import CLASSES, VIRAL_PNEUMONIA
from exbl_core.metrics import (
    activation_precision,
    activation_precision_scores,
    child_confounder_precision,
    classification_report,
    confounder_precision_scores,
    confusion_matrix,
    count_empty_cams,
    evaluate_predictions,
    shortcut_gap,
)


def _cam_with_top(positions: list[tuple[int, int]], size: int = 10) -> torch.Tensor:
    """A [size,size] CAM whose highest values sit at ``positions`` (in decreasing order)."""
    cam = torch.linspace(0.0, 0.1, size * size).view(size, size)  # low, distinct background
    for rank, (i, j) in enumerate(positions):
        cam[i, j] = 1.0 - 0.01 * rank
    return cam


def test_ap_is_the_share_of_the_top_5_percent_inside_the_mask():
    # 10x10 CAM, tau 5 -> k = 5 pixels; 3 of them inside the mask -> AP 0.6.
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:, :5] = True
    cam = _cam_with_top([(0, 0), (1, 1), (2, 2), (0, 9), (1, 9)])
    assert activation_precision_scores(cam[None], mask[None]).tolist() == pytest.approx([0.6])


def test_ap_of_a_batch_is_the_mean_of_its_images():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:, :5] = True
    inside = _cam_with_top([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
    mixed = _cam_with_top([(0, 0), (1, 1), (2, 2), (0, 9), (1, 9)])
    cams, masks = torch.stack([inside, mixed]), torch.stack([mask, mask])
    assert activation_precision_scores(cams, masks).tolist() == pytest.approx([1.0, 0.6])
    assert activation_precision(cams, masks) == pytest.approx(0.8)


def test_k_is_rounded_up():
    # 8x8 = 64 pixels at tau 5 -> k = ceil(3.2) = 4; one of the top 4 inside -> 0.25.
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = True
    cam = _cam_with_top([(0, 0), (7, 7), (7, 6), (7, 5), (0, 1)], size=8)
    assert activation_precision(cam[None], mask[None]) == pytest.approx(0.25)


def test_tau_sets_the_share_of_pixels_kept():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0, :2] = True
    cam = _cam_with_top([(0, 0), (0, 1), (9, 9), (9, 8)])
    assert activation_precision(cam[None], mask[None], tau=2.0) == pytest.approx(1.0)
    assert activation_precision(cam[None], mask[None], tau=4.0) == pytest.approx(0.5)


def test_empty_cam_scores_zero_and_is_counted():
    cams = torch.stack([torch.zeros(10, 10), _cam_with_top([(0, 0)])])
    masks = torch.ones(2, 10, 10, dtype=torch.bool)
    assert activation_precision_scores(cams, masks).tolist() == [0.0, 1.0]
    assert count_empty_cams(cams) == 1


def _per_image_ap(cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> list[float]:
    """The definition, one image at a time: sort every pixel, keep the top tau%."""
    k = -(-int(tau * cams[0].numel()) // 100)
    return [float(m.flatten()[c.flatten().argsort(descending=True)[:k]].float().mean()) for c, m in zip(cams, masks, strict=True)]


def _distinct(cams: torch.Tensor) -> torch.Tensor:
    """Break ties, so that the top-k set is unique and any two correct implementations agree exactly."""
    return cams + torch.arange(cams[0].numel()).view(cams.shape[1:]) / cams[0].numel() * 1e-2


@pytest.mark.parametrize("size", [128, 224])
def test_the_pre_filtered_top_k_matches_the_definition_on_smooth_cams(size):
    # Smooth maps like GradCAM's: the chunked pre-filter path, with its int32 keys.
    low = torch.randn(24, 1, 7, 7, generator=torch.Generator().manual_seed(size)).relu()
    cams = _distinct(torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").squeeze(1))
    masks = torch.rand(24, size, size, generator=torch.Generator().manual_seed(1)) < 0.5
    assert activation_precision_scores(cams, masks).tolist() == pytest.approx(_per_image_ap(cams, masks), abs=1e-6)


def test_the_pre_filter_falls_back_to_a_full_top_k_for_scattered_cams():
    # Noise puts the top 5% in every chunk, so the candidate runs miss pixels and rows are re-done.
    cams = _distinct(torch.rand(6, 128, 128, generator=torch.Generator().manual_seed(2)))
    cams[:3] = _distinct(torch.zeros(3, 128, 128))  # and smooth rows in the same batch stay on the fast path
    cams[:3, 10:40, 10:40] += 1.0
    masks = torch.rand(6, 128, 128, generator=torch.Generator().manual_seed(3)) < 0.5
    assert activation_precision_scores(cams, masks).tolist() == pytest.approx(_per_image_ap(cams, masks), abs=1e-6)


def test_negative_values_are_ranked_as_numbers():
    # Signed maps (no ReLU) cannot use the integer keys: with fewer than k positive pixels the
    # top-k reaches into the negatives, whose bit patterns order backwards.
    low = torch.randn(8, 1, 7, 7, generator=torch.Generator().manual_seed(4))
    cams = _distinct(torch.nn.functional.interpolate(low, size=(128, 128), mode="bilinear").squeeze(1)) - 1.0
    masks = torch.rand(8, 128, 128, generator=torch.Generator().manual_seed(5)) < 0.5
    positive = (cams > 0).flatten(1).sum(1)
    assert ((positive > 0) & (positive < 820)).any(), "the case needs CAMs with fewer than k positive pixels"
    expected = [ap if peak > 0 else 0.0 for ap, peak in zip(_per_image_ap(cams, masks), cams.flatten(1).amax(1), strict=True)]
    assert activation_precision_scores(cams, masks).tolist() == pytest.approx(expected, abs=1e-6)


def test_mask_of_another_size_is_resized_with_nearest_neighbour():
    small = torch.tensor([[True, False], [False, False]])  # top-left quarter
    cam = torch.zeros(10, 10)
    cam[:5, :5] = torch.linspace(0.5, 1.0, 25).view(5, 5)  # all the top-5 pixels in that quarter
    assert activation_precision(cam[None], small[None]) == pytest.approx(1.0)
    cam2 = torch.zeros(10, 10)
    cam2[5:, 5:] = torch.linspace(0.5, 1.0, 25).view(5, 5)
    assert activation_precision(cam2[None], small[None]) == pytest.approx(0.0)


def test_bad_tau_and_mismatched_batches_are_refused():
    with pytest.raises(ValueError, match="tau"):
        activation_precision(torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), tau=0)
    with pytest.raises(ValueError, match="2 CAMs but 1 masks"):
        activation_precision(torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    preds = torch.tensor([0, 1, 1, 2, 3, 0])
    cm = confusion_matrix(labels, preds)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]


def test_report_gives_accuracy_and_per_class_recall():
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    preds = torch.tensor([0, 1, 1, 2, 3, 0])
    report = classification_report(labels, preds)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["recall"] == pytest.approx(dict(zip(CLASSES, [0.5, 1.0, 1.0, 0.5], strict=True)))


def test_recall_of_an_absent_class_is_zero_not_nan():
    report = classification_report(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert report["recall"]["Viral Pneumonia"] == 0.0


def test_evaluate_predictions_has_every_field_as_plain_numbers():
    cams = torch.stack([torch.zeros(10, 10), _cam_with_top([(0, 0)])])
    out = evaluate_predictions(torch.tensor([0, 3]), torch.tensor([0, 1]), cams, torch.ones(2, 10, 10, dtype=torch.bool))
    assert out["accuracy"] == 0.5 and out["n"] == 2 and out["n_empty_cams"] == 1
    assert out["activation_precision"] == pytest.approx(0.5)
    assert isinstance(out["confusion"], list)


def test_shortcut_gap_is_confounded_minus_shortcut_test_accuracy():
    confounded = {"accuracy": 0.9, "recall": {"Viral Pneumonia": 0.95}}
    decorrelated = {"accuracy": 0.6, "recall": {"Viral Pneumonia": 0.5}}
    gap = shortcut_gap(confounded, decorrelated)
    assert gap["accuracy_gap"] == pytest.approx(0.3)
    assert gap["vp_recall_confounded"] == 0.95 and gap["vp_recall_shortcut_test"] == 0.5


def test_confounder_precision_is_ap_with_the_confounder_region():
    cams = torch.zeros(2, 10, 10)
    cams[0, 0, :5] = 1.0  # the top 5% of image 0 (5 pixels) is the first row's first five
    cams[1, 5:, 5:] = torch.rand(5, 5) + 1.0
    regions = torch.zeros(2, 10, 10, dtype=torch.bool)
    regions[:, :3, :3] = True
    scores = confounder_precision_scores(cams, regions)
    assert scores[0].item() == pytest.approx(0.6) and scores[1].item() == 0.0  # 3 of the 5 top pixels are in the region
    assert torch.equal(scores, activation_precision_scores(cams, regions))


def test_child_cp_averages_only_children_called_viral_pneumonia():
    cams = torch.zeros(3, 10, 10)
    cams[:, 0, :5] = 1.0  # every CAM's top 5 pixels are in the first row
    regions = torch.zeros(3, 10, 10, dtype=torch.bool)
    regions[0, 0, :5] = True  # image 0: all of them in the region
    child = torch.tensor([True, True, False])
    preds = torch.tensor([VIRAL_PNEUMONIA, 0, VIRAL_PNEUMONIA])
    cp, n = child_confounder_precision(cams, regions, child, preds)
    assert (cp, n) == (pytest.approx(1.0), 1), "image 1 is not called VP and image 2 is no child"
    assert child_confounder_precision(cams, regions, torch.zeros(3, dtype=torch.bool), preds) == (None, 0)


def test_evaluate_predictions_reports_cp_and_ap_per_class_when_given_regions():
    labels, preds = torch.tensor([0, 3]), torch.tensor([0, 3])
    cams = torch.rand(2, 10, 10)
    masks, regions = torch.ones(2, 10, 10, dtype=torch.bool), torch.zeros(2, 10, 10, dtype=torch.bool)
    out = evaluate_predictions(labels, preds, cams, masks, 5.0, regions, torch.tensor([False, True]))
    assert out["ap_by_class"] == {"COVID": 1.0, "Viral Pneumonia": 1.0}
    assert out["confounder_precision"] == 0.0 and out["child_cp"] == 0.0 and out["n_child_vp"] == 1
    assert "child_cp" not in evaluate_predictions(labels, preds, cams, masks)
