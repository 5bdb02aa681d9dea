"""Does a refined model still use the shortcut where its input gradient no longer shows it?

A measurement, not a speed benchmark. ``rrr-lungs`` penalises the input gradient outside
each lung mask, and on the testbed the penalty falls while the shortcut test does not
move (README, the every-method study). Two readings fit that: the model stopped using the
epiphyses and something else holds the shortcut test back, or the model still uses them
while its gradient there is small (a network of clipped ReLU6 units can be flat at the
data and still respond to a whole epiphysis).

The phantom answers it directly. Drawing the confounder takes no random numbers, so the
shortcut-test split drawn with every image a child and drawn with none gives the same
patients with and without epiphyses. For each model this reports, over those patients:

* ``effect``: the mean change of log p(Viral Pneumonia) when the epiphyses are added, the
  model's real use of them;
* ``linear``: the same change as the input gradient at the child image predicts it,
  ``grad log p(VP) . (x_child - x_adult)``;
* ``vp_child`` / ``vp_adult``: the share called Viral Pneumonia with and without them, and
  ``flips``: the share whose predicted class changes;
* ``penalty``: what ``rrr-lungs`` penalises (Ross et al., eq. 1, before its scale), the
  squared input gradient of the summed log-probabilities outside the lung mask, summed over
  pixels, at the child images;
* ``grad_outside`` / ``grad_region``: the share of that squared gradient outside the lung
  mask and inside the confounder region: where the gradient is, whatever its size.

    python -m experiments.gradient_masking runs/demo [--which unrefined oracle rrr-lungs exbl] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core import run_data, run_models, runs
from exbl_core.data import VIRAL_PNEUMONIA, Split
from exbl_core.methods.rrr import summed_log_prob_gradient
from exbl_core.model import evaluating
from exbl_core.synthetic import SyntheticConfig, generate_split

FIGURES = ("effect", "linear", "vp_child", "vp_adult", "flips", "penalty", "grad_outside", "grad_region")


def patients_with_and_without(cfg: SyntheticConfig) -> tuple[Split, Split]:
    """The shortcut-test patients drawn with child anatomy on every image, and on none."""
    return (
        generate_split("shortcut_test", replace(cfg, shortcut_child_rate=1.0)),
        generate_split("shortcut_test", replace(cfg, shortcut_child_rate=0.0)),
    )


def _gradients(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities [B,C], and the input gradients [B,H,W] of log p(VP) and of sum_k log p_k."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        g_sum = summed_log_prob_gradient(logits, x, create_graph=False, retain_graph=True)
        logp = F.log_softmax(logits, 1)
        (g_vp,) = torch.autograd.grad(logp[:, VIRAL_PNEUMONIA].sum(), x)
    return logp.detach(), g_vp[:, 0], g_sum


def masking_scores(model: nn.Module, kids: Split, adults: Split, batch: int = 50) -> dict[str, float]:
    """The figures of ``FIGURES`` for one model, over the patients of ``kids`` and ``adults``."""
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in FIGURES}
    images_kid, images_adult = kids.float_images(), adults.float_images()
    with evaluating(model):
        for i in range(0, len(kids.labels), batch):
            x_kid, x_adult = images_kid[i : i + batch], images_adult[i : i + batch]
            logp_kid, g_vp, g_sum = _gradients(model, x_kid)
            with torch.no_grad():
                logp_adult = F.log_softmax(model(x_adult), 1)
            energy = g_sum.pow(2)
            total = energy.flatten(1).sum(1).clamp_min(1e-30)
            outside, region = ~kids.masks[i : i + batch], kids.regions[i : i + batch]
            pred_kid, pred_adult = logp_kid.argmax(1), logp_adult.argmax(1)
            per_image["effect"].append(logp_kid[:, VIRAL_PNEUMONIA] - logp_adult[:, VIRAL_PNEUMONIA])
            per_image["linear"].append((g_vp * (x_kid - x_adult)[:, 0]).flatten(1).sum(1))
            per_image["vp_child"].append((pred_kid == VIRAL_PNEUMONIA).float())
            per_image["vp_adult"].append((pred_adult == VIRAL_PNEUMONIA).float())
            per_image["flips"].append((pred_kid != pred_adult).float())
            per_image["penalty"].append((energy * outside).flatten(1).sum(1))
            per_image["grad_outside"].append((energy * outside).flatten(1).sum(1) / total)
            per_image["grad_region"].append((energy * region).flatten(1).sum(1) / total)
    return {name: float(torch.cat(values).mean()) for name, values in per_image.items()}


def render(scores: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | effect (log p VP) | linear estimate | called VP, child | called VP, adult | flips "
        "| penalty | gradient outside lungs | gradient in confounder region |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[f]:.3g}" if f == "penalty" else f"{s[f]:.3f}" for f in FIGURES) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder on synthetic data")
    p.add_argument("--which", nargs="+", default=None, help="unrefined, oracle and refinement names (default: every model the run has)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    run = runs.open_run(args.run)
    cfg = run_data.data_config(run)
    if not isinstance(cfg, SyntheticConfig):
        p.error(f"{args.run}: the counterfactual patients need synthetic data")
    available = run_models.models_in(run)
    which = args.which or available
    missing = [name for name in which if name not in available]
    if missing:
        p.error(f"{args.run} has no model {', '.join(missing)}; it has {', '.join(available)}")
    kids, adults = patients_with_and_without(cfg)
    scores = {name: masking_scores(run_models.load_model(run, name, torch.device("cpu")), kids, adults) for name in which}
    print(json.dumps(scores) if args.json else render(scores))


if __name__ == "__main__":
    main()
