"""The real sample: 17 real chest radiographs in the data set's folder layout, and the segmenter.

No real chest X-ray data set can be downloaded here, but the package registry carries a few
real radiographs inside packages, and a real lung segmenter (docs/design.md, section 13). This
module fetches the two archives with ``pip download --no-deps`` (pinned versions; nothing is
installed), checks each archive's SHA-256 against the value committed below, and extracts only
the files it needs: 16 pediatric JPEGs, the adult DICOM from pydicom-data (a dev dependency,
checked by pydicom's own hash), and the segmenter's weights, converted by the restricted reader
into a weights-only state dict whose SHA-256 is committed too. The folder is written beside its
final place and renamed into it, so a failure leaves nothing half-made.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from exbl_core import segmenter
from exbl_core.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "real-sample"
DOWNLOADS = REPO / ".cache" / "downloads"


class SampleError(ValueError):
    """The real sample cannot be made; the message names the file."""


@dataclass(frozen=True)
class Archive:
    """A pinned package archive on the registry, and the SHA-256 it must have."""

    package: str
    version: str
    file: str
    sha256: str
    binary: bool  # a wheel; otherwise a source archive

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PNEUMONIA_WHEEL = Archive(
    "pneumonia-model-package",
    "0.3.0",
    "pneumonia_model_package-0.3.0-py3-none-any.whl",
    "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536",
    binary=True,
)
CHEXWHATSAPP_SDIST = Archive(
    "chexwhatsapp", "0.1.5", "cheXwhatsApp-0.1.5.tar.gz", "645e7ca4fbd184319ac6d1bb3ef4a39803357cec6233faa64a5297f8c022ba9d", binary=False
)
SEGMENTER_MEMBER = "cheXwhatsApp-0.1.5/cheXwhatsApp/lung_segmentation.pt"
PEDIATRIC_DIR = "pneumonia_model_package/datasets/pneumonia-data/val/"
ADULT_FILE = "RG1_UNCR.dcm"
ADULT_SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"  # pydicom's data/hashes.json

# Class folders named for what they hold; none is one of the paper's four classes.
ADULT, CHILD_PNEUMONIA, CHILD_NORMAL = "Adult", "Child bacterial pneumonia", "Child normal"
CLASS_OF_PREFIX = {"NORMAL2-": CHILD_NORMAL, "person": CHILD_PNEUMONIA}
N_PEDIATRIC = 16

KERMANY = (
    "Kermany DS, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for "
    "Classification. Mendeley Data, v2, doi:10.17632/rscbjbr9sj.2; Kermany DS et al. (2018), Cell 172(5):1122-1131. "
    "Licence CC BY 4.0 at the source. Pediatric patients aged one to five, Guangzhou Women and Children's Medical Center."
)


def _sha256(path: Path) -> str:
    return segmenter.sha256_file(path)


def fetch(archive: Archive, downloads: Path = DOWNLOADS, say: Callable[[str], None] = print) -> Path:
    """The archive in the download cache, fetched with pip once; its SHA-256 checked every time.

    A mismatching download is deleted and refused; a cached file that no longer matches is
    refused by name, since this code did not necessarily write it.
    """
    path = downloads / archive.file
    if path.is_file():
        found = _sha256(path)
        if found != archive.sha256:
            raise SampleError(f"{path}: SHA-256 {found} is not the pinned {archive.sha256}; delete it to download it again")
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".tmp-") as tmp:
        kind = "--only-binary=:all:" if archive.binary else "--no-binary=:all:"
        say(f"Downloading {archive.requirement} ({'wheel' if archive.binary else 'source archive'}) with pip, without dependencies")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, "--quiet", "-d", tmp, archive.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / archive.file
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SampleError(f"{archive.file}: pip download {archive.requirement} failed ({last})")
        found = _sha256(got)
        if found != archive.sha256:
            raise SampleError(f"{archive.file}: downloaded file's SHA-256 {found} is not the pinned {archive.sha256}; nothing was kept")
        got.replace(path)
    return path


def adult_dicom() -> Path:
    """RG1_UNCR.dcm from pydicom-data, checked against pydicom's recorded hash."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(ADULT_FILE)
    if found is None:
        raise SampleError(f"{ADULT_FILE}: not found; install the dev requirements (pydicom-data) first")
    path = Path(found)
    if _sha256(path) != ADULT_SHA256:
        raise SampleError(f"{path}: SHA-256 differs from pydicom's recorded {ADULT_SHA256}")
    return path


def _pediatric(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(PEDIATRIC_DIR) and n.lower().endswith(".jpeg"))
        if len(names) != N_PEDIATRIC:
            raise SampleError(f"{wheel}: expected {N_PEDIATRIC} radiographs under {PEDIATRIC_DIR}, found {len(names)}")
        return {Path(n).name: zf.read(n) for n in names}


def class_of(name: str) -> str:
    for prefix, cls in CLASS_OF_PREFIX.items():
        if name.startswith(prefix):
            return cls
    raise SampleError(f"{name}: not a file name of the pediatric set")


def sources_markdown(files: dict[str, list[str]]) -> str:
    """SOURCES.md: every file's origin, licence and attribution."""
    lines = [
        "# Sources of the real sample",
        "",
        "Written by `make real-sample` (`python -m exbl_core real-sample`). Nothing here is a training set: 17 real chest",
        "radiographs, for inspecting lung masks and a model's maps on real images. The classes are named for what the",
        "images are, not the paper's four, so training and scoring refuse this folder.",
        "",
        f"## {CHILD_NORMAL}/ and {CHILD_PNEUMONIA}/: 16 pediatric chest radiographs (JPEG)",
        "",
        f"From the wheel `{PNEUMONIA_WHEEL.file}` on PyPI (package `{PNEUMONIA_WHEEL.package}` {PNEUMONIA_WHEEL.version},",
        f"SHA-256 `{PNEUMONIA_WHEEL.sha256}`), folder `{PEDIATRIC_DIR}`, copied byte for byte.",
        f"Original data set: {KERMANY} The COVID-19 Radiography Database's Viral Pneumonia class",
        "comes from the same pediatric source.",
        "",
    ]
    for cls in (CHILD_NORMAL, CHILD_PNEUMONIA):
        lines += [f"- `{cls}/images/{name}`" for name in files[cls]]
    lines += [
        "",
        f"## {ADULT}/: one adult chest radiograph (DICOM)",
        "",
        f"- `{ADULT}/images/{ADULT_FILE}`: a frontal chest CR, 1841x1955 pixels (width x height), 15 bits stored, MONOCHROME1. From the",
        f"  pydicom-data 1.0.0 package (MIT licence; Darcy Mason and contributors), SHA-256 `{ADULT_SHA256}` as pydicom",
        "  records it. Its name follows the NEMA DICOM WG-04 sample images, from which pydicom's other `*_UNC` test files",
        "  come. The source gives no diagnosis; round opacities are visible in both lungs.",
        "",
        "## masks/: lung masks from a segmentation model",
        "",
        "Written by `python -m exbl_core masks --data real-sample`: PNG, named as the image (its extension `.png`),",
        "0 = background, 255 = lung. The model is a U-Net (VGG11 encoder) whose weights come from the source archive",
        f"`{CHEXWHATSAPP_SDIST.file}` (package `{CHEXWHATSAPP_SDIST.package}` {CHEXWHATSAPP_SDIST.version}, MIT licence,",
        f"copyright 2024 Sahil Lathiya; SHA-256 `{CHEXWHATSAPP_SDIST.sha256}`), file `{SEGMENTER_MEMBER}`: trained on the",
        "Montgomery and Shenzhen chest X-ray sets, test Dice 0.961 reported by its authors. These masks are a model's",
        "output, not annotations.",
        "",
    ]
    return "\n".join(lines)


def convert_segmenter(sdist: Path, out: Path = segmenter.WEIGHTS_FILE) -> str:
    """Write the segmenter's weights-only state dict from the source archive once; its SHA-256.

    The pickle is streamed out of the archive into the restricted reader; nothing in the
    archive is written to disk or executed. An existing file is kept when its hash is the
    committed one, and refused by name otherwise.
    """
    if out.is_file():
        found = _sha256(out)
        if found != segmenter.WEIGHTS_SHA256:
            raise SampleError(f"{out}: SHA-256 {found} is not the recorded {segmenter.WEIGHTS_SHA256}; delete it to convert again")
        return found
    with tarfile.open(sdist) as tf:
        member = tf.extractfile(SEGMENTER_MEMBER)
        if member is None:
            raise SampleError(f"{sdist}: has no {SEGMENTER_MEMBER}")
        state = segmenter.convert_checkpoint(member)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # saved in memory: the archive's inner name is then always the same, and so is the hash
    data = buffer.getvalue()
    found = segmenter.sha256_bytes(data)
    if found != segmenter.WEIGHTS_SHA256:
        raise SampleError(
            f"{out}: converted weights have SHA-256 {found}, not the recorded {segmenter.WEIGHTS_SHA256}; nothing was written"
        )
    atomic_write_bytes(out, data)
    return found


def build(out: Path = DEFAULT_OUT, downloads: Path | None = None, say: Callable[[str], None] = print) -> Path:
    """Fetch, check and extract; write ``out`` (when it is not there yet) and the segmenter's weights."""
    downloads = downloads or DOWNLOADS
    wheel, sdist = fetch(PNEUMONIA_WHEEL, downloads, say), fetch(CHEXWHATSAPP_SDIST, downloads, say)
    adult = adult_dicom()
    sha = convert_segmenter(sdist)
    say(f"Segmenter weights: {segmenter.WEIGHTS_FILE} (SHA-256 {sha}, checked)")
    if out.exists():
        say(f"{out}: already there; left as it is")
        return out
    files: dict[str, list[str]] = {ADULT: [ADULT_FILE], CHILD_NORMAL: [], CHILD_PNEUMONIA: []}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        tmp.chmod(0o755)  # the folder is renamed into place whole, so its files need no atomic writes of their own
        for cls in files:
            (tmp / cls / "images").mkdir(parents=True)
            (tmp / cls / "masks").mkdir()
        for name, data in _pediatric(wheel).items():
            cls = class_of(name)
            files[cls].append(name)
            (tmp / cls / "images" / name).write_bytes(data)
        shutil.copyfile(adult, tmp / ADULT / "images" / ADULT_FILE)
        (tmp / "SOURCES.md").write_text(sources_markdown(files), encoding="utf-8")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"Wrote {out}: {sum(map(len, files.values()))} radiographs in {len(files)} classes, and SOURCES.md")
    return out
