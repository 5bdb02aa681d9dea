"""A U-Net lung segmenter: the architecture, its weights read safely, and batched masks.

The network is the VGG11-encoder U-Net published in the source archive of ``chexwhatsapp``
0.1.5 (MIT; trained on the Montgomery and Shenzhen sets, test Dice 0.961 reported): one
grayscale channel scaled to [-0.5, 0.5] in, two classes out, argmax 1 = lung. Only its
architecture is written here; its weights come from the archive through
:mod:`exbl_core.legacy_checkpoint` (a restricted reader) and are saved once as a weights-only
state dict, loaded with ``weights_only=True`` and checked by SHA-256 (docs/design.md, section 13).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from exbl_core.legacy_checkpoint import CheckpointError, read_state_dict

# The classes the pickled model names; the restricted reader turns each into a stand-in.
PICKLED_CLASSES = (
    "lung_segmentation.PretrainedUNet",
    "lung_segmentation.Block",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
)
WEIGHTS_FILE = Path(__file__).resolve().parents[1] / ".cache" / "segmenter" / "lung-unet.pt"  # git-ignored
# The converted state dict's SHA-256, recorded once: torch.save of the same tensors to memory gives the same bytes.
WEIGHTS_SHA256 = "eec246a7077b5a92ccf379f46627cec758f74a2b1b130409d2f9f190e41c79a8"
NATIVE_SIZE = 512  # the input size it was trained at
DEFAULT_SIZE = 256  # the input size `masks` uses: 4x fewer operations (bench/RESULTS.md has the IoU against 512)
_ENCODER = (("conv1", 3, 64), ("conv2", 64, 128), ("conv3", 128, 256), ("conv3s", 256, 256))
_ENCODER += (("conv4", 256, 512), ("conv4s", 512, 512), ("conv5", 512, 512), ("conv5s", 512, 512))
_DECODER = (("dec5", 768, 512, 256), ("dec4", 768, 512, 128), ("dec3", 384, 256, 64), ("dec2", 192, 128, 32), ("dec1", 96, 64, 32))


class Block(nn.Module):
    """Two 3x3 convolutions, each with batch norm and ReLU."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(x)), inplace=True)

    def fold(self) -> None:
        """Fold each batch norm into its convolution: the same function in eval mode, fewer passes."""
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_eval(self.conv2, self.bn2), nn.Identity()


class LungUNet(nn.Module):
    """The segmenter: a 1x1 convolution to 3 channels, VGG11's convolutions as the encoder, and
    a decoder of bilinear upsampling and :class:`Block` s joined to the encoder by skips."""

    def __init__(self) -> None:
        super().__init__()
        self.init_conv = nn.Conv2d(1, 3, 1)
        for name, cin, cout in _ENCODER:
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
        self.center = Block(512, 512, 256)
        for name, cin, mid, cout in _DECODER:
            setattr(self, name, Block(cin, mid, cout))
        self.out = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Lung logits minus background logits [B, S, S] for images [B, 1, S, S] in [-0.5, 0.5]."""
        relu, down = F.relu, F.max_pool2d
        x = relu(self.init_conv(x))
        enc1 = relu(self.conv1(x))
        enc2 = relu(self.conv2(down(enc1, 2)))
        enc3 = relu(self.conv3s(relu(self.conv3(down(enc2, 2)))))
        enc4 = relu(self.conv4s(relu(self.conv4(down(enc3, 2)))))
        enc5 = relu(self.conv5s(relu(self.conv5(down(enc4, 2)))))
        x = self.center(down(enc5, 2))
        for block, skip in ((self.dec5, enc5), (self.dec4, enc4), (self.dec3, enc3), (self.dec2, enc2), (self.dec1, enc1)):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        logits = self.out(x)
        return logits[:, 1] - logits[:, 0]


def convert_checkpoint(file: BinaryIO) -> dict[str, torch.Tensor]:
    """The segmenter's state dict from the published whole-model pickle, read by the restricted
    reader and checked against :class:`LungUNet` key by key and shape by shape."""
    state = read_state_dict(file, PICKLED_CLASSES)
    expected = LungUNet().state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"does not hold the lung U-Net (missing {missing[:3]}, unexpected {extra[:3]})")
    wrong = [k for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"does not hold the lung U-Net ({wrong[0]} is {tuple(state[wrong[0]].shape)})")
    return state


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_segmenter(path: Path = WEIGHTS_FILE, sha256: str = WEIGHTS_SHA256) -> LungUNet:
    """The segmenter ready for inference: weights-only load, SHA-256 checked, batch norm folded,
    channels_last. Raises :class:`CheckpointError` naming the file when anything is off."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: segmenter weights not found; run `make real-sample` to convert them once")
    found = sha256_file(path)
    if found != sha256:
        raise CheckpointError(f"{path}: SHA-256 {found[:16]}... is not the recorded {sha256[:16]}...; delete it and run `make real-sample`")
    model = LungUNet()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not the lung U-Net's weights ({exc})") from exc
    model.eval()
    for block in (model.center, model.dec5, model.dec4, model.dec3, model.dec2, model.dec1):
        block.fold()
    return model.to(memory_format=torch.channels_last)


def network_input(gray: np.ndarray, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """A grayscale image in [0, 1] as the network reads it: [1, size, size] in [-0.5, 0.5].

    Made as soon as the image is read, so a batch of large radiographs costs a few small
    tensors in memory, not their full-size pixels.
    """
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0] - 0.5


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): only then is bf16 faster than fp32.

    On the 17 real radiographs bf16 at 512 px gave masks with IoU 0.998 against fp32 (bench/RESULTS.md).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@torch.inference_mode()
def lung_logits(model: LungUNet, inputs: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Lung-minus-background logits [B, S, S] in fp32 for a batch from :func:`network_input`."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(inputs.contiguous(memory_format=torch.channels_last)).float()


def mask_at(logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A boolean lung mask at ``shape``: the logits upsampled bilinearly, then thresholded at 0,
    so its edges are as smooth as the network's output allows at any image size."""
    return (F.interpolate(logits[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def lung_masks(model: LungUNet, images: Iterable[np.ndarray], size: int = DEFAULT_SIZE, bf16: bool = False) -> list[np.ndarray]:
    """One boolean lung mask per grayscale image in [0, 1], at the image's own size, in one batch."""
    images = list(images)
    logits = lung_logits(model, torch.stack([network_input(g, size) for g in images]), bf16)
    return [mask_at(lg, g.shape) for lg, g in zip(logits, images, strict=True)]
