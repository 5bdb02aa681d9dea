"""Training-step cost: cross-entropy only, every refinement method, and eXBL through create_graph autograd.

Each step is a full optimiser step (forward, loss, backward, Adam) on one batch, in
training mode, from the trained checkpoint. A method's step is exactly what
``training.fit`` runs: its batch rewrite, then ``training._batch_losses`` with its objective. The autograd
variant builds the CAMs with ``gradcam(..., route="autograd", create_graph=True)``;
a forward hook on the model captures the logits of that same forward pass for the
cross-entropy, so it also costs one forward pass (calling the model a second time
for the logits would charge it for an extra forward and sample another dropout mask).
The CE and ``rrr-lungs`` steps are timed once more on a copy of the model with torch's
own depthwise convolutions, which ``model.DepthwiseConv2d`` replaces.

    python -m bench.train_step --sizes 224 128 --repeats 7
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Section, bench_parser, compare, ensure_trained_run, load_trained, synthetic_batch, table
from exbl_core.config import RefineConfig
from exbl_core.data import Split
from exbl_core.explainers.gradcam import gradcam
from exbl_core.losses import exbl_loss, explanation
from exbl_core.methods import METHODS as REGISTRY
from exbl_core.methods import Batch, Objective, Pair
from exbl_core.methods.exbl import Exemplars, compute_exemplars
from exbl_core.model import set_depthwise_kind
from exbl_core.training import _batch_losses

METHODS = ("ce", *REGISTRY, "exbl-autograd", "ce-torch-depthwise", "rrr-lungs-torch-depthwise")
LABELS = {
    "ce": "CE only",
    "exbl": "eXBL, analytic CAM (what `fit` runs)",
    "exbl-autograd": "eXBL, autograd `create_graph=True`",
    "ce-torch-depthwise": "CE only, torch's depthwise convolution",
    "rrr-lungs-torch-depthwise": "rrr-lungs, torch's depthwise convolution",
}


def make_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    objectives: dict[str, Objective],
    ex: Exemplars,
    cfg: RefineConfig,
) -> dict[str, Callable[[], float]]:
    """One zero-argument callable per kind of step; each does a full Adam step and returns the loss."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)

    def step(loss: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def method_step(objective: Objective | None) -> Callable[[], float]:
        def run() -> float:
            batch = Batch(x.clone(), y, masks)
            if objective is not None and objective.batch is not None:
                batch = objective.batch(batch, gen)
            return step(_batch_losses(model, batch, cfg, objective, training=True)["loss"])

        return run

    def exbl_autograd() -> float:
        captured: list[torch.Tensor] = []
        handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            cams = gradcam(model, x, y, route="autograd", create_graph=True)
        finally:
            handle.remove()
        loss = F.cross_entropy(captured[-1], y) + cfg.weight * exbl_loss(
            explanation(x, cams), ex.c_good, ex.c_bad, cfg.margin, cfg.distance
        )
        return step(loss)

    return {"ce": method_step(None), **{name: method_step(o) for name, o in objectives.items()}, "exbl-autograd": exbl_autograd}


def run(run_dir: Path, sizes: tuple[int, ...] = (224, 128), batch: int = 32, repeats: int = 7) -> Section:
    rows, targets_met, data = [], [], {}
    cfg = RefineConfig()
    for size in sizes:
        model = load_trained(run_dir)
        x, y, masks = synthetic_batch(size, batch, split="train")
        ex = compute_exemplars(model, (x[0], int(y[0])), (x[1], int(y[1])))
        split = Split(images=(x * 255).round().to(torch.uint8), masks=masks, labels=y, names=[str(i) for i in range(len(y))])
        objectives = {name: m.build_objective(model, split, Pair(0, 1), RefineConfig(method=name)) for name, m in REGISTRY.items()}
        model.train()
        steps = make_steps(model, x, y, masks, objectives, ex, cfg)
        # The same steps with torch's nn.Conv2d for the depthwise layers, which model.DepthwiseConv2d replaces.
        plain = make_steps(set_depthwise_kind(copy.deepcopy(model), nn.Conv2d), x, y, masks, objectives, ex, cfg)
        steps.update({"ce-torch-depthwise": plain["ce"], "rrr-lungs-torch-depthwise": plain["rrr-lungs"]})
        t = compare(steps, repeats)
        data[size] = t.seconds
        for m in METHODS:
            rows.append([size, LABELS.get(m, m), f"{t.best(m):.3f}", f"{t.median(m):.3f}", t.both(m, "ce")])
        if size == 224:
            r = t.ratio("exbl", "ce")
            targets_met.append(("eXBL step at 224 <= 1.15x CE step", t.both("exbl", "ce"), r <= 1.15))
        if size == 128:
            for name in REGISTRY:
                if name not in ("exbl", "exbl-cam"):
                    targets_met.append((f"{name} step at 128 <= 3x CE step", t.both(name, "ce"), t.ratio(name, "ce") <= 3.0))
    md = [
        f"Batch {batch}, training mode, Adam, trained checkpoint; {repeats} repeats with alternating order.",
        "Time ratios to the CE step (lower is cheaper) from each step's fastest repeat; in parentheses the median per-repeat ratio.",
        "",
        table(["size", "step", "best s / step", "median s / step", "time vs CE"], rows),
    ]
    return Section("2. Training-step cost", "\n".join(md), targets_met, data)


def main() -> None:
    p = bench_parser(__doc__)
    args = p.parse_args()
    section = run(ensure_trained_run(args.run), tuple(args.sizes), args.batch, args.repeats)
    print(section.render())
    for target, measured, met in section.targets:
        print(f"{'MET ' if met else 'MISS'} {target}: {measured}")


if __name__ == "__main__":
    main()
