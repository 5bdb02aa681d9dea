"""MobileNetV2 as in the paper (section 4.2), taking grayscale images in [0, 1].

The network normalises its own input, so every caller (training, GradCAM, the eXBL
loss, the app) passes the same ``[B, 1, H, W]`` tensor in [0, 1] and ``gray(x)`` never
needs undoing. The parameter names are torchvision's, so ImageNet weights load as is
(``weights.py`` finds, checks and records them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models import MobileNetV2

ARCH = "mobilenet_v2"
FROZEN_BLOCKS = 6  # the paper's first 50 Keras layers end inside torchvision's features[5]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution whose input gradient is a transposed convolution, recorded as one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple, dilation: tuple) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        saved_x, saved_weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        # Under CPU autocast the forward ran in bf16 while x and the weight stayed fp32, and the
        # backward runs outside autocast: compute in the gradient's dtype and hand each gradient
        # back in its input's dtype. In fp32 every cast is a no-op, so nothing changes there.
        x, weight = saved_x.to(grad.dtype), saved_weight.to(grad.dtype)
        groups = weight.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # The rows and columns a strided convolution never reached come back as output padding.
            extra = tuple(
                x.shape[2 + i] - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1)
                for i in range(2)
            )
            grad_x = F.conv_transpose2d(grad, weight, None, stride, padding, extra, groups, dilation).to(saved_x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad, stride, padding, dilation, groups).to(saved_weight.dtype)
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with one filter per channel, and an input gradient that is cheap to differentiate.

    ``rrr-lungs`` differentiates the input gradient once more. PyTorch's generic double
    backward of a grouped convolution loops over the groups, one small convolution per
    channel (about 7,000 calls for MobileNetV2's 17 depthwise layers); written as a
    transposed convolution, the input gradient's own gradient is one grouped kernel per
    layer. Values and gradients are the same to float rounding, and so are the parameter
    names, so checkpoints and ImageNet weights load either way. MobileNetV2's depthwise
    layers have no bias, but the inference copy with BatchNorm folded in gives them one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DepthwiseConv.apply(x, self.weight, self.stride, self.padding, self.dilation)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def set_depthwise_kind(model: nn.Module, kind: type[nn.Conv2d] = DepthwiseConv2d) -> nn.Module:
    """Make every depthwise convolution of ``model`` a ``kind``, holding the same weight; returns ``model``.

    ``nn.Conv2d`` puts torch's own back, which ``bench.train_step`` times side by side.
    """
    for parent in list(model.modules()):
        for name, conv in parent.named_children():
            depthwise = isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels > 1
            if depthwise and type(conv) is not kind and conv.bias is None and conv.padding_mode == "zeros":
                # skip_init draws no random numbers, so a seed still gives the same initial weights.
                swapped = torch.nn.utils.skip_init(
                    kind,
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=False,
                )
                swapped.weight = conv.weight
                setattr(parent, name, swapped)
    return model


class XrayMobileNetV2(MobileNetV2):
    """torchvision's MobileNetV2 with the paper's head and built-in input normalisation."""

    def __init__(self, num_classes: int = 4, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__(num_classes=1000)
        self.classifier = nn.Sequential(
            nn.Linear(self.last_channel, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        set_depthwise_kind(self)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """[B,1,H,W] or [B,3,H,W] in [0, 1] -> the normalised 3-channel network input."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # channels_last makes MobileNetV2's depthwise convolutions 1.3-1.6x faster on CPU.
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(feats, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(self.features(self.network_input(x))))


LAST_STRIDED_BLOCK = 14  # features[14] halves 8x8 to 4x4 at 128 px; features[15:18] follow it


def dilate_last_stage(model: XrayMobileNetV2) -> None:
    """Output stride 16: the last stage keeps its input's resolution, with dilation 2 after it.

    The same weights then see the same context (each 3x3 depthwise kernel spans twice
    the pixels of a map twice as fine), as DeepLab does, so a checkpoint loads either
    way; the CAM doubles its resolution (8x8 at 128 px instead of 4x4), which is what
    lets it tell a shoulder from the lung beside it.
    """
    model.features[LAST_STRIDED_BLOCK].conv[1][0].stride = (1, 1)
    for block in model.features[LAST_STRIDED_BLOCK + 1 : 18]:
        depthwise = block.conv[1][0]
        depthwise.dilation, depthwise.padding = (2, 2), (2, 2)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, and back in the mode it had after it.

    Explanations and exemplars are about the network as it predicts: running BatchNorm
    statistics and no dropout, even in the middle of a training epoch.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def freeze_early_blocks(model: XrayMobileNetV2, blocks: int = FROZEN_BLOCKS) -> None:
    """Freeze the parameters of ``features[:blocks]``, as the paper does with ImageNet weights."""
    for p in model.features[:blocks].parameters():
        p.requires_grad_(False)


def build_model(
    num_classes: int = 4,
    backbone: Mapping[str, torch.Tensor] | None = None,
    freeze: bool | None = None,
    output_stride: int = 32,
) -> XrayMobileNetV2:
    """The paper's classifier, from random weights or from ``backbone``.

    ``backbone`` is a state dict with every ``features.*`` tensor (``weights.load_backbone``
    reads and checks one from a file); the classifier always starts fresh, since the
    paper's head differs from ImageNet's. ``freeze=None`` freezes ``features[:6]`` exactly
    when a backbone was loaded: frozen *random* filters only cripple the network (on the
    synthetic default the validation accuracy stalled near 0.4 with them frozen, and
    passed 0.9 without). ``output_stride`` 32 is the paper's network; 16 (``dilate_last_stage``) is an
    experiment setting (experiments/shapes_backbone.py), which the CLI and the app never use.
    """
    if output_stride not in (16, 32):
        raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
    model = XrayMobileNetV2(num_classes=num_classes)
    if output_stride == 16:
        dilate_last_stage(model)
    if backbone is not None:
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items() if k.startswith("features.")})
    if freeze or (freeze is None and backbone is not None):
        freeze_early_blocks(model)
    return model.to(memory_format=torch.channels_last)


def _tree_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``, its submodules and their tensors, as ``copy.deepcopy`` makes, without its
    generic machinery: 0.01 s for MobileNetV2 on CPU, against 0.03-0.36 s (``python -m bench.epoch_parts``)."""
    new = copy.copy(module)
    new._parameters = {k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad) for k, p in module._parameters.items()}
    new._buffers = {k: None if b is None else b.clone() for k, b in module._buffers.items()}
    new._modules = {k: None if child is None else _tree_copy(child) for k, child in module._modules.items()}
    return new


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm folded into the convolution before it.

    In eval mode a BatchNorm is an affine map per channel, so it can live inside the
    convolution's weights and bias. On CPU that removes about a third of the time of a
    forward pass (a profile of 200 images at 128 px spent 35% in batch norm), and every
    explanation costs one forward pass. The result equals the original up to float rounding.
    A folded copy is made once per explainer call and per validation pass, hence ``_tree_copy``.
    """
    folded = _tree_copy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    conv.weight, conv.bias = fuse_conv_bn_weights(
                        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
                    )
                    module[i + 1] = nn.Identity()
    return folded
