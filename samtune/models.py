"""Model registry: the architectures of the Harada & Iiduka grid plus a tiny CNN.

``create_model(name, num_classes=..., in_channels=..., image_size=...)`` builds
one of:

- ``resnet18``: CIFAR ResNet-18 (3×3 stride-1 stem, no max-pool; BasicBlock
  [2, 2, 2, 2], widths 64..512), torchvision's ``resnet18`` with the stem
  replaced.  11,173,962 parameters for 10 classes.
- ``resnet50``: torchvision's ``resnet50`` (Bottleneck [3, 4, 6, 3]); 25,557,032
  parameters for 1000 classes with the ImageNet stem.  Images of at most 64
  pixels get the CIFAR stem instead (23,705,252 parameters for 100 classes).
- ``wrn28_10``: Wide-ResNet-28-10 (Zagoruyko & Komodakis 2016, arXiv
  1605.07146), pre-activation wide basic blocks, widths 16/160/320/640;
  36,479,194 parameters for 10 classes.  ``depth``/``widen``/``dropout``
  keywords give other WRN-d-k.
- ``vit_tiny``: torchvision's ``VisionTransformer`` at CIFAR scale (patch 4, 9
  layers, 12 heads, hidden 192, MLP 384); 2,714,980 parameters for 100 classes.
- ``small_cnn``: two 3×3 conv + BatchNorm blocks and a linear head for the 8×8
  scikit-learn digits.

The CIFAR architectures follow ``iiduka-researches/GSAM_batch_inc
models/resnet.py``, ``models/wide_resnet.py``, ``models/ViT.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.vision_transformer import VisionTransformer

from samtune import schema

# Inputs at most this large get the CIFAR stem (3×3 stride 1, no max-pool):
# torchvision's ImageNet stem would shrink a 32×32 image to 1×1 by layer4.
CIFAR_STEM_MAX_SIZE = 64


def _kaiming_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv init torchvision's ResNet and the WRN reference use."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# ---------------------------------------------------------------------------
# ResNets (torchvision blocks, stem chosen by input size)


def _resnet_stem(model: nn.Module, in_channels: int, image_size: int, stem: str) -> nn.Module:
    if stem not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"stem must be one of auto, cifar, imagenet; got {stem!r}")
    if stem == "auto":
        stem = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem == "cifar":
        model.conv1 = _kaiming_conv_(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False))
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _kaiming_conv_(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False))
    return model


def resnet18(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, stem: str = "cifar"
) -> nn.Module:
    """CIFAR ResNet-18: torchvision's network with a 3×3 stride-1 stem and no
    max-pool (``stem="imagenet"`` or ``"auto"`` for larger images)."""
    return _resnet_stem(tv_resnet18(num_classes=num_classes), in_channels, image_size, stem)


def resnet50(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, stem: str = "auto"
) -> nn.Module:
    """torchvision's ResNet-50.  With ``stem="auto"`` images of at most 64 pixels
    get the CIFAR stem (as in Harada's CIFAR-100 ResNet-50), larger ones keep
    the ImageNet 7×7 stride-2 stem and max-pool."""
    return _resnet_stem(tv_resnet50(num_classes=num_classes), in_channels, image_size, stem)


# ---------------------------------------------------------------------------
# Wide-ResNet


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3.

    When the width or stride changes, the shortcut is a 1×1 conv applied to the
    pre-activated input (as in the WRN reference code); otherwise it is the
    identity on the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen: stem conv 16, three groups of ``(depth - 4) / 6`` wide
    blocks with widths ``16k, 32k, 64k`` and strides 1, 2, 2, then BN-ReLU,
    global average pooling and a linear head."""

    def __init__(
        self, *, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}")
        if widen < 1:
            raise ValueError(f"widen must be >= 1, got {widen!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for in_planes, out_planes, stride in zip(widths[:-1], widths[1:], (1, 2, 2)):
            group = [WideBasicBlock(in_planes, out_planes, stride, dropout)]
            for _ in range(blocks_per_group - 1):
                group.append(WideBasicBlock(out_planes, out_planes, 1, dropout))
            groups.append(nn.Sequential(*group))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _kaiming_conv_(module)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


def wrn(
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    depth: int = 28,
    widen: int = 10,
    dropout: float = 0.0,
) -> nn.Module:
    """Wide-ResNet-``depth``-``widen`` (default WRN-28-10); global average
    pooling makes it accept any ``image_size``."""
    return WideResNet(
        depth=depth, widen=widen, num_classes=num_classes, in_channels=in_channels, dropout=dropout
    )


# ---------------------------------------------------------------------------
# Vision Transformer


def vit_tiny(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4
) -> nn.Module:
    """ViT-Tiny at CIFAR scale: torchvision's ``VisionTransformer`` with hidden
    192, 9 layers, 12 heads, MLP 384 (the SPT_LSA_ViT / Harada "ViT-T" sizes;
    torchvision's blocks have no stochastic depth).  For ``in_channels != 3``
    the patch projection is rebuilt with torchvision's own init."""
    if image_size % patch_size:
        raise ValueError(
            f"image_size must be divisible by patch_size={patch_size!r}, got {image_size!r}"
        )
    model = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=9,
        num_heads=12,
        hidden_dim=192,
        mlp_dim=384,
        num_classes=num_classes,
    )
    if in_channels != 3:
        proj = nn.Conv2d(in_channels, model.hidden_dim, kernel_size=patch_size, stride=patch_size)
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(proj.bias)
        model.conv_proj = proj
    return model


# ---------------------------------------------------------------------------
# small CNN for 8×8 digits


class SmallCNN(nn.Module):
    """conv3×3(32)-BN-ReLU, conv3×3(64)-BN-ReLU, 2×2 max-pool, 64×2×2 adaptive
    average pool, linear head.  21,482 parameters for 10 classes; the
    BatchNorm layers exercise SAM's BN handling."""

    def __init__(self, *, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(64 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def small_cnn(*, num_classes: int, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """The small CNN for the 8×8 digits (works for any image size >= 2)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)


# ---------------------------------------------------------------------------
# registry


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "wrn28_10": wrn,
    "vit_tiny": vit_tiny,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
}
_COMMON_ARGS = ("num_classes", "in_channels", "image_size")


def reinitialize_(model: nn.Module, init: str) -> nn.Module:
    """Re-draw the weights of ``model`` in place (from the global torch RNG):

    - ``default``: leave the architecture's own init (torchvision's ResNets and
      the WRN: Kaiming-normal fan-out convs; the small CNN: PyTorch's layer init);
    - ``pytorch``: every layer's own ``reset_parameters()``, i.e. what a model
      with no init code gets (convs and linears Kaiming-uniform with a = √5, BN
      weight 1, bias 0): the paper's ResNets (``iiduka-researches/GSAM_batch_inc``
      ``models/resnet.py``);
    - ``kaiming``: convs Kaiming-normal fan-out (ReLU gain), BN weight 1 and bias 0,
      linears PyTorch's init: torchvision's ResNet recipe, on any architecture.
    """
    if init not in schema.INITS:
        raise ValueError(f"init must be one of {', '.join(schema.INITS)}; got {init!r}")
    if init == "default":
        return model
    for module in model.modules():
        if init == "kaiming" and isinstance(module, nn.Conv2d):
            _kaiming_conv_(module)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def create_model(
    name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32, init: str = "default",
    **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name`` with weights drawn by ``init`` (see
    :func:`reinitialize_`); ``kwargs`` go to its builder (e.g.
    ``depth``/``widen``/``dropout`` for ``wrn28_10``, ``stem`` for the ResNets,
    ``patch_size`` for ``vit_tiny``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    for key, value in zip(_COMMON_ARGS, (num_classes, in_channels, image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    builder = MODELS[name]
    allowed = [key for key in inspect.signature(builder).parameters if key not in _COMMON_ARGS]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    return reinitialize_(model, init)
