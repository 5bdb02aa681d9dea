"""What training tells its listeners: one typed event per kind, from the training loop to the page.

``fit`` publishes these events; the pipeline tags them (``method``, and what an interrupted
attempt ``kept``) and appends all but ``batch_end`` to history.jsonl; the CLI prints them and
the app draws them. Each value keeps one name on that whole way: a refinement term's mean is
``expl`` and the share of triplets it still pushes is ``active_triplets``, in a method's
``Terms`` as in the epoch's record. The events stay plain dicts at run time, so history.jsonl
is plain JSON and an older history still reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

import torch


class Terms(TypedDict):
    """A refinement method's term on one batch (``Objective.term``), unweighted."""

    expl: torch.Tensor  # [] the term the loss adds, times the method's weight
    active_triplets: NotRequired[torch.Tensor]  # [] eXBL: the share of triplets whose hinge is still open


class _Tagged(TypedDict):
    phase: str  # "unrefined", "oracle" or "refine"
    method: NotRequired[str]  # a refinement's method, added by the pipeline


class Start(_Tagged):
    type: Literal["start"]
    epochs: int
    settings: dict
    time: float


class BatchEnd(_Tagged):
    type: Literal["batch_end"]
    epoch: int
    batch: int
    batches: int
    loss: float


class EpochEnd(_Tagged):
    type: Literal["epoch_end"]
    epoch: int
    epochs: int
    loss: float
    ce: float
    accuracy: float
    lr: float
    seconds: float
    precision: NotRequired[str]  # "fp32" or "bf16": what the epoch's forward passes computed in (absent before bf16 existed)
    val_loss: float
    val_ce: float
    val_accuracy: float
    val_ap: NotRequired[float]
    val_expl: NotRequired[float]
    expl: NotRequired[float]  # the epoch's mean of ``Terms.expl``
    active_triplets: NotRequired[float]  # the epoch's mean of ``Terms.active_triplets``
    best: bool  # the best validation loss so far: its weights were checkpointed


class EarlyStop(_Tagged):
    type: Literal["early_stop"]
    epoch: int
    best_epoch: int


class Done(_Tagged):
    type: Literal["done"]
    epoch: int
    best_epoch: int
    best_val_loss: float


class Kept(TypedDict):
    """What an interrupted or failed attempt left (``pipeline._Attempt.kept``)."""

    model: str  # the finished model's file
    model_unchanged: bool
    file: str | None  # where this attempt's best epoch is, if one finished
    epoch: int


class Cancelled(_Tagged):
    type: Literal["cancelled"]
    epoch: int | None
    best_epoch: int
    reason: NotRequired[Literal["interrupted"]]  # SIGINT or SIGTERM, not the app's Cancel
    kept: NotRequired[Kept]
    kept_message: NotRequired[str]


class Failed(_Tagged):
    type: Literal["failed"]
    epoch: int | None
    best_epoch: int
    error: str
    kept: NotRequired[Kept]
    kept_message: NotRequired[str]


Event = Start | BatchEnd | EpochEnd | EarlyStop | Done | Cancelled | Failed
EventCallback = Callable[[Event], None]
END_TYPES = ("done", "cancelled", "failed")  # the events that end an attempt
