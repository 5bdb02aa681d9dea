"""Data sets as in-memory tensors: the COVID-19 Radiography Database layout and splits.

A split is small enough to hold in memory (the paper's 5,200 images at 224x224 are
about 260 MB as uint8), which keeps training loops simple and fast. Images are kept
as grayscale uint8 in [0, 255]; the model normalises for itself, so that
``gray(x)`` in the eXBL loss is simply ``images / 255``.
"""

from __future__ import annotations

import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
VIRAL_PNEUMONIA = CLASSES.index("Viral Pneumonia")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
MAX_IMAGE_PIXELS = 40_000_000  # about 6300x6300: far above any radiograph we expect


class DataError(ValueError):
    """A data set problem the user can fix; the message names the file or folder."""


@dataclass
class Split:
    """One split held in memory: images uint8 [N,1,H,W], masks bool [N,H,W], labels [N]."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    child: torch.Tensor | None = None  # synthetic only: which images carry the confounder
    regions: torch.Tensor | None = None  # synthetic only: bool [N,H,W], where the confounder is (or would be) drawn
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images in [0, 1] as float32, the one input convention of every model here."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    def subset(self, index: torch.Tensor | list[int]) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(
            images=self.images[index],
            masks=self.masks[index],
            labels=self.labels[index],
            names=[self.names[i] for i in index.tolist()],
            child=None if self.child is None else self.child[index],
            regions=None if self.regions is None else self.regions[index],
        )

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASSES)).tolist()
        return dict(zip(CLASSES, counts, strict=True))


@dataclass(frozen=True)
class SplitSizes:
    """Images per class in each split. The paper's 3,200 / 1,200 / 800 are totals."""

    train: int = 800
    val: int = 300
    test: int = 200


# --------------------------------------------------------------------------- reading


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        if rows * cols > MAX_IMAGE_PIXELS:  # checked from the header, before decoding anything
            raise DataError(f"{path}: image is {cols}x{rows}, larger than the {MAX_IMAGE_PIXELS:,}-pixel limit; refusing to decode it")
        pixels = ds.pixel_array.astype(np.float32)
    except DataError:
        raise
    except (AttributeError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: DICOM file has no readable pixel data ({exc})") from exc
    except Exception as exc:  # pydicom raises many types for broken files
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(-1)
    elif pixels.ndim != 2:
        raise DataError(f"{path}: expected a single 2-D DICOM frame, got shape {pixels.shape}")
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    pixels = np.clip(pixels / float(2**bits - 1), 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels


def _read_raster(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: image is {im.width}x{im.height}, larger than the {MAX_IMAGE_PIXELS:,}-pixel limit; refusing to decode it"
                    )
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float32) / 65535.0
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: image is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return np.clip(arr, 0.0, 1.0)


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, JPEG or DICOM) as float32 grayscale in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path)
    return _read_raster(path)


def _resize(arr: np.ndarray, size: int, mode: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if mode == "nearest":
        return F.interpolate(t, size=(size, size), mode="nearest")[0, 0]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def binary_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """Lung pixels: above half the mask's own maximum, so 0/1, 0/255 and 16-bit masks all work.

    A mask with no lung pixel, or one that is lung everywhere, would make every AP on its
    image meaningless (0 or 1 whatever the model does), so it is refused naming the file.
    """
    binary = mask > mask.max() / 2
    if not binary.any():
        raise DataError(f"{path}: lung mask is empty (no pixel above half its maximum)")
    if binary.all():
        raise DataError(f"{path}: lung mask covers the whole image, so it marks no lung")
    return binary


def load_pair(image_path: Path, mask_path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (uint8 [1,S,S]) and its lung mask (bool [S,S]) at the training size."""
    image = read_gray(image_path)
    mask = read_gray(mask_path)
    ih, iw = image.shape
    mh, mw = mask.shape
    # Masks may be stored at another resolution (256 for 299 in the real data set), but
    # they must cover the same field of view, or resizing would misalign them.
    if abs(ih / iw - mh / mw) > 0.02:
        raise DataError(f"{mask_path}: mask is {mw}x{mh} but its image {image_path.name} is {iw}x{ih}; their shapes do not match")
    img = (_resize(image, size, "bilinear").clamp(0, 1) * 255).round().to(torch.uint8)[None]
    msk = _resize(binary_mask(mask, mask_path).astype(np.float32), size, "nearest") > 0.5
    return img, msk


# --------------------------------------------------------------------------- layout


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mask_index(masks_dir: Path) -> dict[str, list[Path]]:
    """The image files in a masks folder, by file name without its extension."""
    index: dict[str, list[Path]] = {}
    for p in image_files(masks_dir):
        index.setdefault(p.stem, []).append(p)
    return index


def find_mask(image: Path, index: dict[str, list[Path]]) -> Path:
    """The lung mask of ``image``: the file of the same name, or else the one file of the same
    name with another image extension (a DICOM image with a PNG mask).

    Names are compared exactly, never as patterns: ``Normal-1.old.png`` is not a mask of
    ``Normal-1.png``, and with both ``Normal-1.png`` and ``Normal-1.jpg`` present the
    image ``Normal-1.png`` takes ``Normal-1.png``. Two candidates and no exact name is an error.
    """
    candidates = index.get(image.stem, [])
    exact = [p for p in candidates if p.name == image.name]
    if exact:
        return exact[0]
    if len(candidates) == 1:
        return candidates[0]
    masks_dir = image.parent.parent / "masks"
    if not candidates:
        raise DataError(f"{image}: no lung mask with the same name in {masks_dir}")
    names = ", ".join(p.name for p in candidates)
    raise DataError(f"{image}: several files in {masks_dir} could be its lung mask ({names}); keep one, named {image.name}")


def scan_dataset(root: str | Path, skip_bad: bool = False) -> tuple[dict[str, list[tuple[Path, Path]]], list[str]]:
    """Check the folder layout and pair every image with its mask.

    Returns ``({class: [(image, mask), ...]}, skipped)``. With ``skip_bad`` an image
    without a mask is listed in ``skipped`` instead of raising.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data path is not a folder")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(set(folders) - set(CLASSES))
    if unknown:
        raise DataError(
            f"{root}: unknown class folder(s) {', '.join(map(repr, unknown))}; training and scoring need exactly "
            f"{', '.join(map(repr, CLASSES))} (a folder of other classes opens for inspection only, as a gallery)"
        )
    missing = [c for c in CLASSES if c not in folders]
    if missing:
        raise DataError(f"{root}: missing class folder(s) {', '.join(map(repr, missing))}")
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    skipped: list[str] = []
    for cls in CLASSES:
        images_dir, masks_dir = folders[cls] / "images", folders[cls] / "masks"
        for sub in (images_dir, masks_dir):
            if not sub.is_dir():
                raise DataError(f"{sub}: folder is missing; each class needs images/ and masks/")
        masks = mask_index(masks_dir)
        found = []
        for image in image_files(images_dir):
            try:
                found.append((image, find_mask(image, masks)))
            except DataError as exc:
                if not skip_bad:
                    raise
                skipped.append(str(exc))
        if not found:
            raise DataError(f"{images_dir}: class folder holds no images with masks")
        pairs[cls] = found
    return pairs, skipped


def make_split(pairs: dict[str, list[tuple[Path, Path]]], sizes: SplitSizes, seed: int) -> dict[str, list[tuple[int, str]]]:
    """A seeded split as ``{split: [(label, image path relative to root), ...]}``.

    Written to the run folder as split.json, so that a run can be reproduced exactly.
    """
    need = sizes.train + sizes.val + sizes.test
    out: dict[str, list[tuple[int, str]]] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(CLASSES):
        files = [img for img, _ in pairs[cls]]
        if len(files) < need:
            raise DataError(
                f"class {cls!r} has {len(files)} usable images, fewer than the {need} the split asks for "
                f"({sizes.train} train + {sizes.val} val + {sizes.test} test per class)"
            )
        order = random.Random(f"{seed}:{cls}").sample(range(len(files)), need)
        bounds = {"train": (0, sizes.train), "val": (sizes.train, sizes.train + sizes.val), "test": (sizes.train + sizes.val, need)}
        for split, (a, b) in bounds.items():
            out[split] += [(label, f"{cls}/images/{files[i].name}") for i in order[a:b]]
    return out


def load_entries(root: str | Path, entries: list[tuple[int, str]], size: int, skip_bad: bool = False, workers: int = 4) -> Split:
    """Load a list of ``(label, relative image path)`` into a Split at ``size`` x ``size``.

    A missing data folder and an empty list are said as such first: otherwise a moved data
    set reads as a missing lung mask, and an empty list as "none of the 0 images".
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: the data folder is not there (moved or deleted?); put it back or start a new run")
    if not entries:
        raise DataError(f"{root}: this split lists no images")
    masks_dirs = {(root / rel).parent.parent / "masks" for _, rel in entries}
    indexes = {d: mask_index(d) if d.is_dir() else {} for d in masks_dirs}

    def load(entry: tuple[int, str]):
        label, rel = entry
        image_path = root / rel
        try:
            return load_pair(image_path, find_mask(image_path, indexes[image_path.parent.parent / "masks"]), size)
        except DataError as exc:
            if not skip_bad:
                raise
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, entries))
    kept = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    skipped = [str(r) for r in results if isinstance(r, Exception)]
    if not kept:
        raise DataError(f"{root}: none of the {len(entries)} images in this split could be read")
    return Split(
        images=torch.stack([results[i][0] for i in kept]),
        masks=torch.stack([results[i][1] for i in kept]),
        labels=torch.tensor([entries[i][0] for i in kept], dtype=torch.long),
        names=[entries[i][1] for i in kept],
        skipped=skipped,
    )


# --------------------------------------------------------------------------- inspection


@dataclass
class Gallery:
    """Images of any classes, for looking at (masks and a model's maps), never for training or scoring.

    ``labels`` index ``classes`` (the folder names), not the paper's four; an image without a
    lung mask has an all-False row in ``masks`` and False in ``has_mask``.
    """

    images: torch.Tensor  # uint8 [N,1,S,S]
    masks: torch.Tensor  # bool [N,S,S]
    has_mask: torch.Tensor  # bool [N]
    labels: torch.Tensor
    classes: list[str]
    paths: list[Path]
    mask_paths: list[Path | None]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: list[int]) -> Gallery:
        return Gallery(
            self.images[index],
            self.masks[index],
            self.has_mask[index],
            self.labels[index],
            self.classes,
            [self.paths[i] for i in index],
            [self.mask_paths[i] for i in index],
        )


def scan_gallery(root: str | Path) -> dict[str, list[tuple[Path, Path | None]]]:
    """Every class folder's images with their lung masks (None where there is none), whatever the
    classes are called: the folder layout of the data set, read for inspection."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    found: dict[str, list[tuple[Path, Path | None]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "images").is_dir()):
        index = mask_index(folder / "masks") if (folder / "masks").is_dir() else {}
        pairs = [(image, find_mask(image, index) if image.stem in index else None) for image in image_files(folder / "images")]
        if pairs:
            found[folder.name] = pairs
    if not found:
        raise DataError(f"{root}: no images found (expected CLASS/images/ folders with PNG, JPEG or DICOM files)")
    return found


def load_gallery(root: str | Path, size: int, workers: int = 4) -> Gallery:
    """The images of :func:`scan_gallery` at ``size`` x ``size``, as a model of that size reads them."""
    found = scan_gallery(root)
    entries = [(label, image, mask) for label, pairs in enumerate(found.values()) for image, mask in pairs]

    def load(entry: tuple[int, Path, Path | None]) -> tuple[torch.Tensor, torch.Tensor]:
        _, image, mask = entry
        if mask is not None:
            return load_pair(image, mask, size)
        img = (_resize(read_gray(image), size, "bilinear").clamp(0, 1) * 255).round().to(torch.uint8)[None]
        return img, torch.zeros(size, size, dtype=torch.bool)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = list(pool.map(load, entries))
    return Gallery(
        images=torch.stack([img for img, _ in loaded]),
        masks=torch.stack([m for _, m in loaded]),
        has_mask=torch.tensor([mask is not None for _, _, mask in entries]),
        labels=torch.tensor([label for label, _, _ in entries], dtype=torch.long),
        classes=list(found),
        paths=[image for _, image, _ in entries],
        mask_paths=[mask for _, _, mask in entries],
    )
