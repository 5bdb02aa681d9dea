"""The backbone weights a run starts from: torchvision's ImageNet file, random, or a local file.

The paper fine-tunes a MobileNetV2 pretrained on ImageNet, so a run on real radiographs
is only comparable with it when it starts from those weights. This tool never downloads
at run time: ``download_imagenet`` is the only code here that touches the network, and
only the user-started ``python -m exbl_core weights --download`` calls it. Every weights
file is read with ``weights_only=True``, checked against MobileNetV2's backbone, and
recorded by SHA-256, so that a run says exactly what it started from.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torchvision.models import MobileNet_V2_Weights

from exbl_core.load_failure import describe_load_failure
from exbl_core.model import FROZEN_BLOCKS, XrayMobileNetV2

log = logging.getLogger(__name__)

IMAGENET, RANDOM, FILE = "imagenet", "random", "file"
IMAGENET_NAME = "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"
IMAGENET_URL = MobileNet_V2_Weights.IMAGENET1K_V1.url
DOWNLOAD_COMMAND = "python -m exbl_core weights --download"


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, changed, or not a MobileNetV2 backbone."""


@dataclass(frozen=True)
class StartWeights:
    """What a run's model starts from, as config.json records it.

    ``frozen_blocks`` is how many of ``features`` are frozen during training: the paper's
    6 with loaded weights, none from random weights (frozen random filters only cripple
    the network: the synthetic demo's validation accuracy stalled near 0.4 with them).
    """

    weights: str  # imagenet, random or file
    weights_file: str | None = None
    weights_sha256: str | None = None
    frozen_blocks: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def imagenet_file() -> Path:
    """Where torchvision keeps the ImageNet file: the torch hub cache, under its own name."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name


def imagenet_hash_prefix() -> str:
    """The SHA-256 prefix torchvision puts in the file name (``mobilenet_v2-b0353104.pth``)."""
    return torch.hub.HASH_REGEX.search(Path(IMAGENET_URL).name).group(1)


def imagenet_cached() -> bool:
    """True when torchvision's ImageNet file is already in the local torch hub cache."""
    return imagenet_file().is_file()


def resolve(choice: str | Path | None, real_data: bool) -> StartWeights:
    """The weights a new run starts from, checked now so that a bad choice fails before any work.

    ``None`` is the default: ImageNet for real data when its file is cached (as in the
    paper), else random weights with a one-line warning; synthetic data starts from random
    weights, so the demo runs the same everywhere. ``imagenet`` requires the cached file,
    and a path must hold a MobileNetV2 backbone.
    """
    if choice is None:
        if not real_data:
            return StartWeights(RANDOM)
        if not imagenet_cached():
            log.warning(
                "ImageNet weights are not in the local torch hub cache (%s); starting from random weights. To use them, run: %s",
                imagenet_file(),
                DOWNLOAD_COMMAND,
            )
            return StartWeights(RANDOM)
        choice = IMAGENET
    if choice == RANDOM:
        return StartWeights(RANDOM)
    if choice == IMAGENET:
        path = imagenet_file()
        if not path.is_file():
            raise WeightsError(f"ImageNet weights are not in the local torch hub cache ({path}); run: {DOWNLOAD_COMMAND}")
        _, sha256 = load_backbone(path)
        if not sha256.startswith(imagenet_hash_prefix()):
            raise WeightsError(
                f"{path}: SHA-256 {sha256[:12]}… does not match torchvision's file ({imagenet_hash_prefix()}…); "
                f"delete it and run: {DOWNLOAD_COMMAND}"
            )
        return StartWeights(IMAGENET, str(path), sha256, FROZEN_BLOCKS)
    path = Path(choice).expanduser().resolve()
    _, sha256 = load_backbone(path)
    return StartWeights(FILE, str(path), sha256, FROZEN_BLOCKS)


def load_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """``(features state dict, SHA-256 of the file)`` from a MobileNetV2 weights file.

    Accepts a torchvision MobileNetV2 state dict (its classifier is ignored, since the
    paper's head differs) or a backbone-only dict with ``features.*`` keys. Anything else
    gets a ``WeightsError`` naming the file: the user must know their weights were not used.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    data = path.read_bytes()
    if not data:
        raise WeightsError(f"{path}: weights file is empty (0 bytes)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, or a pickle that would run code
        raise WeightsError(f"{path}: cannot be loaded safely as weights ({describe_load_failure(data)})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{path}: not a state dict (a mapping from parameter names to tensors)")
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    _check_backbone(path, features)
    return features, hashlib.sha256(data).hexdigest()


def _check_backbone(path: Path, features: dict[str, torch.Tensor]) -> None:
    expected = {f"features.{k}": v.shape for k, v in XrayMobileNetV2().features.state_dict().items()}
    missing = [k for k in expected if k not in features]
    if missing:
        raise WeightsError(
            f"{path}: not a MobileNetV2 backbone ({len(missing)} of its {len(expected)} features.* tensors are missing, "
            f"such as {missing[0]})"
        )
    extra = [k for k in features if k not in expected]
    wrong = [k for k in expected if features[k].shape != expected[k]]
    if extra or wrong:
        key = (extra or wrong)[0]
        detail = f"unexpected {key}" if extra else f"{key} has shape {tuple(features[key].shape)}, expected {tuple(expected[key])}"
        raise WeightsError(f"{path}: not a MobileNetV2 backbone ({detail})")


def load_recorded(start: StartWeights) -> dict[str, torch.Tensor] | None:
    """The backbone a run recorded, or ``None`` for random weights; refuses a file that changed since."""
    if start.weights_file is None:
        return None
    path = Path(start.weights_file)
    if not path.is_file():
        raise WeightsError(f"{path}: the weights this run starts from are no longer there; put the file back or start a new run")
    features, sha256 = load_backbone(path)
    if sha256 != start.weights_sha256:
        raise WeightsError(
            f"{path}: changed since the run was created (SHA-256 {sha256[:12]}…, recorded {str(start.weights_sha256)[:12]}…); "
            "start a new run to use the new file"
        )
    return features


def describe(start: StartWeights) -> str:
    """One line for people: which weights, which file and hash, and what was frozen."""
    if start.weights == RANDOM:
        source = "random weights"
    elif start.weights == IMAGENET:
        source = f"ImageNet weights ({IMAGENET_NAME}, SHA-256 {start.weights_sha256})"
    else:
        source = f"the weights in {start.weights_file} (SHA-256 {start.weights_sha256})"
    frozen = f"features[:{start.frozen_blocks}] frozen" if start.frozen_blocks else "every layer trained"
    return f"{source}; {frozen}"


def download_imagenet(progress: bool = True) -> Path:
    """Download torchvision's ImageNet file into the torch hub cache, checking its SHA-256 prefix.

    Only ``python -m exbl_core weights --download`` calls this. torch writes to a temporary
    file and moves it into place only after the hash matched, so a failed or interrupted
    download leaves nothing behind. Offline, the error says where to put the file by hand.
    """
    path = imagenet_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(IMAGENET_URL, str(path), hash_prefix=imagenet_hash_prefix(), progress=progress)
    except OSError as exc:  # urllib's URLError (no network, HTTP errors) is an OSError too
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise WeightsError(f"could not download {IMAGENET_URL} ({reason}); download it elsewhere and put it at {path} by hand") from exc
    except RuntimeError as exc:  # torch's "invalid hash value"
        raise WeightsError(f"{IMAGENET_URL}: the download failed its checksum ({exc}); nothing was saved, try again") from exc
    return path
