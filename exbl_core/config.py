"""The settings of a run, declared and validated once: data specs, presets, and the rules a value must meet.

The command line, the app and a run's config.json are all checked against what is here,
so a setting has one rule wherever it is typed. Training settings (``TrainConfig``: the
training loop's, for the unrefined model, the oracle and refinement alike) and refinement
settings (``RefineConfig``: those, plus the method and its term's settings) each check
their own fields; beside them are the data settings, the presets that bundle them, and
how a hand-given value is explained when it is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, fields, replace

import torch

from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.methods import METHODS, get_method
from exbl_core.segmenter import bf16_native
from exbl_core.synthetic import SyntheticConfig

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings: the unrefined model's and the oracle's, and refinement's loop
    (``RefineConfig`` adds the method). The defaults are the paper's."""

    epochs: int = 60
    lr: float = 1e-4
    batch_size: int = 32
    patience: int = 5  # early stopping on validation loss
    lr_patience: int = 2  # ReduceLROnPlateau
    lr_factor: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    # Experiment settings (experiments/testbed_levers.py; docs/results.md): the CLI and the app
    # keep them off, since none of them unlearned the phantom's shortcut.
    shift: float = 0.0  # random translation of each training image, as a share of its size
    flip: bool = False  # random horizontal flips
    hide: float = 0.0  # hide-and-seek: the chance that each grid cell of a training image is hidden
    hide_patch: int = 32  # the grid cell's side in pixels
    tau: float = 5.0  # Activation Precision's top-k percentage, for validation AP (and, in ``refine``, for evaluation)
    # Experiment setting (bench/refine_precision.py; bench/RESULTS.md, section 4): the forward passes
    # under CPU bf16 autocast ("auto": where the CPU computes bf16 natively). A training step gained
    # 1.02x on this project's AVX512-BF16 CPU, so the CLI and the app keep fp32. A config.json written
    # before this setting existed has none, and so trained in fp32.
    precision: str = "fp32"

    def _checks(self) -> dict[str, bool]:
        """One rule per setting, by name: whether its value passes. ``RefineConfig`` adds its own."""
        # Finite as well as in range: inf passes "> 0", and a run with it trains nothing.
        return {
            "epochs": self.epochs >= 1,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience >= 1,
            "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "shift": 0 <= self.shift < 0.5,
            "hide": 0 <= self.hide < 1,
            "hide_patch": self.hide_patch >= 1,
            "precision": self.precision in PRECISIONS,
        }

    def __post_init__(self) -> None:
        bad = [k for k, ok in self._checks().items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    @classmethod
    def from_dict(cls, settings: dict) -> typing.Self:
        """Settings as a config.json section holds them, checked (types by ``check_types``, ranges by the class).

        A ``train`` section written before training and refinement settings were two types also
        holds the refinement-only settings, which training never read: they are dropped, so old
        run folders, studies and the shipped example's manifest keep opening. Any other unknown
        key is refused.
        """
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in settings.items() if k in names or k not in REFINEMENT_ONLY}
        check_types(cls, kept)
        return cls(**kept)

    def to_dict(self) -> dict:
        """The settings as config.json holds them; ``precision`` only when it is not fp32.

        Every config.json, study and shipped-example manifest written before bf16 existed trained
        in fp32 and has no such key: an fp32 run still writes exactly those settings, so they
        keep matching (``assets.matches``), and one that asked for bf16 or "auto" says so.
        """
        settings = asdict(self)
        if settings["precision"] == "fp32":
            del settings["precision"]
        return settings

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the forward passes compute in: bf16 when asked, or on "auto" on a CPU with native bf16.

        On a CPU without it bf16 is emulated and slower than fp32; on a GPU nothing was measured, so "auto" stays fp32.
        """
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cpu" and bf16_native()):
            return torch.bfloat16
        return torch.float32


@dataclass(frozen=True)
class RefineConfig(TrainConfig):
    """Refinement's settings: the training loop's, the method, and what its term reads (``methods.base.TermSettings``)."""

    method: str = "exbl"  # a name in exbl_core.methods.METHODS
    lambda_expl: float | None = None  # the weight of the method's term; None: the method's default
    margin: float = 1.0
    distance: str = "euclidean"
    explanation: str = "gray_cam"  # E = gray(x) * CAM (the paper's) or "cam"

    def _checks(self) -> dict[str, bool]:
        return {
            **super()._checks(),
            "method": self.method in METHODS,
            "lambda_expl": self.lambda_expl is None or (math.isfinite(self.lambda_expl) and self.lambda_expl >= 0),
            "margin": math.isfinite(self.margin) and self.margin >= 0,
            "distance": self.distance in DISTANCES,
            "explanation": self.explanation in EXPLANATIONS,
        }

    @property
    def weight(self) -> float:
        """The method's term weight: ``lambda_expl``, or the method's default when none was given."""
        return METHODS[self.method].default_lambda if self.lambda_expl is None else self.lambda_expl


REFINEMENT_ONLY = frozenset(f.name for f in fields(RefineConfig)) - {f.name for f in fields(TrainConfig)}
SECTIONS: dict[str, type[TrainConfig]] = {"train": TrainConfig, "refine": RefineConfig}  # config.json's sections and their types


def comparable(settings: dict) -> dict:
    """``settings`` (a config.json, a study's or the shipped manifest's) with its ``train`` and ``refine``
    sections as their types write them today, for comparing settings written at different times.

    A ``train`` section from before the split keeps refinement-only keys that change nothing,
    and a section missing a later setting means its default. A section that is not valid
    settings is left as it is, and so compares unequal.
    """
    out = dict(settings)
    for key, cls in SECTIONS.items():
        if isinstance(settings.get(key), dict):
            with contextlib.suppress(TypeError, ValueError):
                out[key] = cls.from_dict(settings[key]).to_dict()
    return out


@dataclass(frozen=True)
class FolderSpec:
    """A data set folder in the COVID-19 Radiography Database layout, and how to split it."""

    path: str
    size: int = 224
    train: int = 800  # per class
    val: int = 300
    test: int = 200
    seed: int = 0
    skip_bad: bool = False


DataSpec = SyntheticConfig | FolderSpec


@dataclass(frozen=True)
class Preset:
    """Data and training settings that belong together, and what the demo runs with them."""

    data: SyntheticConfig
    train: TrainConfig
    refine: RefineConfig
    methods: tuple[str, ...] = ("exbl",)  # the demo refines with each
    oracle: bool = False  # the demo trains the oracle, so that its verdicts are complete


# The demo is tuned to show a learned shortcut within minutes on 2 CPU cores: from
# random weights the paper's learning rate of 1e-4 is too slow, so the unrefined model
# trains at 1e-3. Refinement keeps the paper's settings, which a method with its own schedule scales.
DEMO = Preset(SyntheticConfig(viral_strength=2.0), TrainConfig(epochs=14, lr=1e-3), RefineConfig(epochs=3), ("exbl", "region-swap"))
QUICK = Preset(
    SyntheticConfig(size=96, n_train=40, n_val=20, n_test=25, viral_strength=2.0),
    TrainConfig(epochs=3, lr=1e-3),
    RefineConfig(epochs=1),
    ("exbl", "region-swap"),
)
PAPER_TRAIN, PAPER_REFINE = TrainConfig(epochs=60), RefineConfig(epochs=100)
DEFAULT_METHOD = "exbl"  # refinement's method when none is chosen: the paper's, never config.json's last choice


def preset(quick: bool = False, real_data: bool = False) -> Preset:
    """The settings a new run starts from: a data set folder trains with the paper's settings, unless quick.

    Read at call time, so that a stand-in for ``DEMO`` (the tests' tiny example) is what every caller gets.
    """
    chosen = QUICK if quick else DEMO
    return replace(chosen, train=PAPER_TRAIN, refine=PAPER_REFINE) if real_data and not quick else chosen


def scheduled(base: RefineConfig, overrides: dict | None = None) -> RefineConfig:
    """``base`` refinement settings with the chosen method's schedule, then ``overrides``, applied.

    The paper's schedule (3 epochs at lr 1e-4 on the demo) suits a loss term that nudges
    the model; a method that changes the data has more to unlearn and says so in
    ``Method.schedule``, as factors on these settings. A command-line or page setting wins.
    """
    overrides = overrides or {}
    try:
        chosen = replace(base, **overrides)
    except TypeError as exc:
        raise ValueError(f"unknown refinement setting ({exc})") from exc
    factors = {k: f for k, f in get_method(chosen.method).schedule.items() if k not in overrides}
    scaled = {k: getattr(chosen, k) * f for k, f in factors.items()}
    if "epochs" in scaled:
        scaled["epochs"] = max(1, round(scaled["epochs"]))
    return replace(chosen, **scaled)


# --------------------------------------------------------------------------- data rules


# Limits that every way into a run (CLI, app, config.json) is checked against, before
# anything is written. Below 16 px nothing of a radiograph is left to learn from.
SIZE_RANGE = (16, 1024)
SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds
MAX_DATA_BYTES = 8 * 2**30  # images and masks of every split, held in memory


def check_data(spec: DataSpec) -> None:
    """Refuse data settings that would crash, or quietly fill the memory, later on."""
    counts = (spec.n_train, spec.n_val, spec.n_test) if isinstance(spec, SyntheticConfig) else (spec.train, spec.val, spec.test)
    problems = []
    if not SIZE_RANGE[0] <= spec.size <= SIZE_RANGE[1]:
        problems.append(f"image size {spec.size} is outside {SIZE_RANGE[0]} to {SIZE_RANGE[1]} pixels")
    if not SEED_RANGE[0] <= spec.seed <= SEED_RANGE[1]:
        problems.append(f"seed {spec.seed} is outside {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    if min(counts) < 1:
        problems.append(f"images per class {' '.join(map(str, counts))} (train, val, test) must each be at least 1")
    images = 4 * (sum(counts) + (spec.n_test if isinstance(spec, SyntheticConfig) else 0))  # synthetic has two test splits
    if not problems and images * spec.size**2 * 2 > MAX_DATA_BYTES:
        problems.append(f"{images} images at {spec.size} px would take {images * spec.size**2 * 2 / 2**30:.0f} GiB of memory")
    if problems:
        raise ValueError("invalid data setting(s): " + "; ".join(problems))


def _fits(value: object, hint: object) -> bool:
    """Does a JSON value have the setting's type? bool is no int here (``"epochs": true`` is no
    epoch count), an int is a fine float, and a float is no int (``"size": 96.5`` is no size)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
    return False


def check_types(cls: type, values: dict) -> None:
    """Refuse a config.json value of the wrong JSON type for ``cls``'s field, naming it (TypeError).

    The dataclasses check ranges, not types: ``True >= 1`` and ``16 <= 96.5`` both pass.
    Unknown keys are left to the dataclass, which refuses them.
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _fits(value, hints[key]):
            wanted = " or ".join(getattr(t, "__name__", str(t)) for t in typing.get_args(hints[key]) or (hints[key],))
            raise TypeError(f"{key} is {json.dumps(value)}, which is not of type {wanted.replace('NoneType', 'null')}")


# --------------------------------------------------------------------------- one value given by hand


# What a value typed by hand (a command-line option) must be, in words, for the line that refuses it.
# The check itself is the settings' own: ``check_data`` for the data, ``TrainConfig`` for training,
# ``RefineConfig`` for refinement; an index only has to be 0 or more before the split it points into is read.
RULES = {
    "size": "must be {} to {} pixels".format(*SIZE_RANGE),
    "seed": "must be {} to {}".format(*SEED_RANGE),
    "per_class": "needs at least 1 image per class in each of train, val and test",
    "epochs": "must be at least 1",
    "patience": "must be at least 1",
    "lr": "must be a finite number above 0",
    "lambda_expl": "must be a finite number, 0 or more",
    "margin": "must be a finite number, 0 or more",
    "good": "must be a training-image index, 0 or more",
    "bad": "must be a training-image index, 0 or more",
    "rows": "must be test-image indices, 0 or more",
}
_SMALLEST = SyntheticConfig(size=SIZE_RANGE[0], n_train=1, n_val=1, n_test=1)  # fits in memory at any valid size
_DATA = {
    "size": lambda v: {"size": v},
    "seed": lambda v: {"seed": v},
    "per_class": lambda v: dict(zip(("n_train", "n_val", "n_test"), v, strict=True)),
}


def refused(name: str, value: object) -> str | None:
    """Why the hand-given setting ``name`` = ``value`` is refused (its rule in words), or None when it is fine.

    The value is tried in the settings object that holds it, so the rule is the one a run is checked against.
    """
    try:
        if name in _DATA:
            check_data(replace(_SMALLEST, **_DATA[name](value)))
        elif name in ("good", "bad", "rows"):
            if min(value if isinstance(value, list | tuple) else [value]) < 0:
                return RULES[name]
        else:
            (RefineConfig if name in REFINEMENT_ONLY else TrainConfig)(**{name: value})
    except ValueError:
        return RULES[name]
    return None
