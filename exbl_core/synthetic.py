"""Procedural chest X-ray phantoms with lung masks and a planted confounder.

The generator exists so that the whole eXBL workflow runs offline, in minutes, on a
laptop, and so that the shortcut can be *measured*: we know exactly which images carry
the confounder. Each phantom has a torso, two lungs (their union minus the heart is
the lung mask), a mediastinum, ribs, clavicles and humerus heads. Disease is drawn
only inside the lungs; the confounder (child epiphyses on the humerus heads) only
outside them. The Viral Pneumonia pathology is deliberately subtle and the
confounder bold, so that, as in the real COVID-19 Radiography Database, the shortcut
is easier to learn than the disease.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, Split

SPLITS = ("train", "val", "test", "shortcut_test")
CONFOUNDER_SIDES = ("both", "one")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the phantom; the defaults are the demo's data set."""

    size: int = 128
    n_train: int = 200  # per class
    n_val: int = 60  # per class
    n_test: int = 100  # per class, for both test splits
    confounder_strength: float = 1.0  # P(child | Viral Pneumonia) in train/val/test
    other_child_rate: float = 0.0  # P(child | other class) in train/val/test
    shortcut_child_rate: float = 0.5  # P(child) for every class in shortcut_test
    pathology_strength: float = 1.0  # scales COVID / Lung_Opacity lesions
    viral_strength: float = 1.0  # scales the subtle Viral Pneumonia texture
    # Experiment settings (experiments/testbed_levers.py): the CLI and the app keep their defaults.
    confounder_contrast: float = 1.0  # scales the epiphysis' dark gap and bright cap
    confounder_sides: str = "both"  # "both" humerus heads carry child anatomy, or "one", drawn per image
    noise: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        if self.confounder_sides not in CONFOUNDER_SIDES:
            raise ValueError(f"confounder_sides must be one of {', '.join(CONFOUNDER_SIDES)}, got {self.confounder_sides!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def oracle_config(cfg: SyntheticConfig) -> SyntheticConfig:
    """The same data set with child anatomy drawn independently of the class everywhere.

    Drawing the confounder takes no random numbers that other images do not take too,
    so the oracle's images are the very same phantoms, with epiphyses on other patients:
    a model trained on them can only use the disease, and its shortcut-test accuracy is
    what unlearning can hope to reach.
    """
    rate = cfg.shortcut_child_rate
    return replace(cfg, confounder_strength=rate, other_child_rate=rate)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1]: u runs left to right, v top to bottom."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(axis, axis, indexing="ij")
    return u, v


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2


def _soft(d: np.ndarray, edge: float = 0.08) -> np.ndarray:
    """A soft-edged inside indicator for a quadratic form d (1 inside, 0 outside)."""
    return np.clip((1.0 - d) / edge, 0.0, 1.0)


def _segment(u: np.ndarray, v: np.ndarray, p0: tuple, p1: tuple, width: float) -> np.ndarray:
    """Soft band around the segment p0-p1, used for clavicles and bone shafts."""
    pu, pv = u - p0[0], v - p0[1]
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0.0, 1.0)
    dist = np.hypot(pu - t * du, pv - t * dv)
    return np.clip((width - dist) / (0.5 * width), 0.0, 1.0)


def _blobs(u, v, rng, centres, radius, lung) -> np.ndarray:
    out = np.zeros_like(u)
    for cu, cv in centres:
        r = radius * rng.uniform(0.7, 1.3)
        out += np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r)))
    return out * lung


def _glyph(u, v, rng, size: int) -> np.ndarray:
    """A burned-in text marker: a random 5x3 block letter in a random corner band."""
    bits = rng.random((5, 3)) < 0.55
    cell = rng.uniform(0.025, 0.04)
    cu = rng.choice([-1, 1]) * rng.uniform(0.55, 0.85)
    cv = rng.uniform(0.55, 0.85) * rng.choice([-1, 1])
    iu = np.floor((u - cu) / cell).astype(int)
    iv = np.floor((v - cv) / cell).astype(int)
    inside = (iu >= 0) & (iu < 3) & (iv >= 0) & (iv < 5)
    out = np.zeros_like(u)
    out[inside] = bits[iv[inside], iu[inside]]
    return out


HUMERUS_HEAD = (0.82, -0.72)  # (|u|, v) of both humerus heads, in the upper corners as on a radiograph
CONFOUNDER_RADIUS = 0.24  # the confounder region: a disc around each humerus head and its epiphysis


def render_phantom(label: int, child: bool, rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom as (image float32 [H, W] in [0, 1], lung mask bool [H, W], confounder region bool [H, W]).

    The confounder region is where child anatomy is drawn when the image has it: both
    humerus heads with their epiphyses, or with ``confounder_sides="one"`` the one head
    drawn for this image. It is returned for every image, child or not, so that
    Confounder Precision can score any CAM.

    With one side, the side is drawn for every image, child or not, so that the oracle's
    phantoms stay the very same images (see ``oracle_config``).
    """
    u0, v0 = _grid(cfg.size)
    sides = (-1, 1) if cfg.confounder_sides == "both" else (int(rng.choice([-1, 1])),)
    # Position and scale jitter: the whole chest moves a little, as patients do.
    s = rng.uniform(0.92, 1.06)
    u = (u0 - rng.uniform(-0.06, 0.06)) / s
    v = (v0 - rng.uniform(-0.05, 0.05)) / s

    torso = _soft(np.abs(u / 0.9) ** 4 + np.abs((v - 0.25) / 1.05) ** 4, 0.15)
    img = 0.08 + 0.42 * torso

    # Shoulders, humerus heads and shafts (outside the lungs).
    bones = np.zeros_like(u)
    for side in (-1, 1):
        head_c = (side * HUMERUS_HEAD[0], HUMERUS_HEAD[1])
        bones = np.maximum(bones, _soft(_ellipse(u, v, *head_c, 0.13, 0.14), 0.2))
        bones = np.maximum(bones, _segment(u, v, head_c, (side * 0.92, 0.4), 0.09))
        bones = np.maximum(bones, 0.8 * _segment(u, v, (side * 0.12, -0.6), (side * 0.7, -0.82), 0.045))
    img = img + 0.35 * bones

    lungs = np.zeros_like(u)
    for side in (-1, 1):
        rw = rng.uniform(0.24, 0.29)
        lungs = np.maximum(lungs, _soft(_ellipse(u, v, side * 0.36, 0.02, rw, 0.56), 0.06))
    heart = _soft(_ellipse(u, v, 0.1, 0.36, 0.24, 0.26), 0.1)
    mediastinum = _soft(_ellipse(u, v, 0.0, -0.1, 0.11, 0.7), 0.15)
    lung_field = lungs * (1 - heart) * (1 - mediastinum)
    img = img - 0.3 * lung_field + 0.12 * np.maximum(heart, mediastinum) * torso

    # Ribs: curved bands across the chest, brighter over the lungs.
    phase = rng.uniform(0, 2 * np.pi)
    rib_wave = np.sin((v + 0.22 * u**2) * 2 * np.pi * 4.2 + phase)
    img = img + 0.06 * (rib_wave > 0.55) * torso * (np.abs(u) < 0.78)

    mask = lung_field > 0.5
    # Lesions fade with the soft lung field but stop at the mask's edge, so that no pathology
    # pixel ever lies outside the lung mask that Activation Precision scores against.
    lung = lung_field * mask

    # Pathology: only inside the lungs.
    name = CLASSES[label]
    if name == "COVID":
        centres = []
        for side in (-1, 1):
            for _ in range(rng.integers(2, 4)):
                centres.append((side * rng.uniform(0.42, 0.56), rng.uniform(0.12, 0.45)))
        img = img + 0.45 * cfg.pathology_strength * np.clip(_blobs(u, v, rng, centres, 0.07, lung), 0, 1)
    elif name == "Lung_Opacity":
        side = rng.choice([-1, 1])
        centre = [(side * rng.uniform(0.25, 0.45), rng.uniform(-0.3, 0.35))]
        img = img + 0.6 * cfg.pathology_strength * np.clip(1.6 * _blobs(u, v, rng, centre, 0.1, lung), 0, 1)
    elif name == "Viral Pneumonia":
        # Perihilar interstitial texture: fine streaks fanning out from the hila.
        ang = np.arctan2(v - 0.0, np.abs(u) - 0.12)
        rad = np.hypot(np.abs(u) - 0.12, v)
        streaks = 0.5 + 0.5 * np.sin(ang * rng.uniform(18, 24) + rng.uniform(0, 2 * np.pi))
        envelope = np.exp(-((rad - 0.2) ** 2) / (2 * 0.13**2))
        img = img + 0.056 * cfg.viral_strength * streaks * envelope * lung

    if child:
        # Child anatomy: an unfused epiphysis, a dark growth-plate gap under a bright cap.
        for side in sides:
            cu, cv = side * HUMERUS_HEAD[0], HUMERUS_HEAD[1]
            gap = _segment(u, v, (cu - 0.13, cv + 0.02), (cu + 0.13, cv - 0.03), 0.03)
            cap = _soft(_ellipse(u, v, cu, cv - 0.1, 0.12, 0.06), 0.3)
            img = img - cfg.confounder_contrast * (0.35 * gap - 0.25 * cap)

    # Nuisances shared by every class.
    for _ in range(rng.integers(1, 3)):
        img = np.maximum(img, 0.95 * _glyph(u0, v0, rng, cfg.size))
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-0.06, 0.06)
    img = (img - 0.3) * contrast + 0.3 + brightness
    img = img + rng.normal(0.0, cfg.noise, img.shape)
    region = np.zeros(u.shape, bool)
    for side in sides:
        region |= _ellipse(u, v, side * HUMERUS_HEAD[0], HUMERUS_HEAD[1] - 0.04, CONFOUNDER_RADIUS, CONFOUNDER_RADIUS) <= 1.0
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask, region & ~mask


def _child_flags(labels: np.ndarray, split: str, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    if split == "shortcut_test":
        p = np.full(len(labels), cfg.shortcut_child_rate)
    else:
        p = np.where(labels == VIRAL_PNEUMONIA, cfg.confounder_strength, cfg.other_child_rate)
    return rng.random(len(labels)) < p


def _per_class(split: str, cfg: SyntheticConfig) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {', '.join(SPLITS)}")
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, "shortcut_test": cfg.n_test}[split]
    if n < 1:
        raise ValueError(f"synthetic split {split!r} needs at least one image per class, got {n}")
    return n


def split_design(split: str, cfg: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """The labels and confounder flags of a split, without rendering a single image.

    They come from their own random stream, so a run can record its split cheaply.
    """
    per_class = _per_class(split, cfg)  # first: it names the valid splits for an unknown one
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 0])
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(labels)
    return labels, _child_flags(labels, split, cfg, rng)


def generate_split(split: str, cfg: SyntheticConfig = SyntheticConfig()) -> Split:
    """Generate one split; the same config and split name always give the same images."""
    labels, child = split_design(split, cfg)
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 1])
    images = np.empty((len(labels), cfg.size, cfg.size), np.uint8)
    masks = np.empty((len(labels), cfg.size, cfg.size), bool)
    regions = np.empty((len(labels), cfg.size, cfg.size), bool)
    for i, (label, is_child) in enumerate(zip(labels, child, strict=False)):
        img, masks[i], regions[i] = render_phantom(int(label), bool(is_child), rng, cfg)
        images[i] = np.round(img * 255)
    return Split(
        images=torch.from_numpy(images).unsqueeze(1),
        masks=torch.from_numpy(masks),
        labels=torch.from_numpy(labels).long(),
        names=[f"{split}-{i:05d}" for i in range(len(labels))],
        child=torch.from_numpy(child),
        regions=torch.from_numpy(regions),
    )


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> dict[str, Split]:
    """All four splits of the synthetic data set."""
    return {split: generate_split(split, cfg) for split in SPLITS}
