"""Model registry: the architectures of the Harada & Iiduka grid plus a tiny CNN.

``create_model(name, num_classes=..., in_channels=..., image_size=...)`` builds
one of:

- ``resnet18``: CIFAR ResNet-18 (3×3 stride-1 stem, no max-pool; BasicBlock
  [2, 2, 2, 2], widths 64..512), torchvision's ``resnet18`` with the stem
  replaced.  11,173,962 parameters for 10 classes.  ``stem="cifar_maxpool"``
  keeps torchvision's 3×3 stride-2 max-pool after the 3×3 stem: Khanh et al.'s
  ResNet-18 (lhchau/fundamental-sam models/resnet.py since commit 3011e3c), the
  same parameters on a 16×16 map from layer1 on.
- ``resnet50``: torchvision's ``resnet50`` (Bottleneck [3, 4, 6, 3]); 25,557,032
  parameters for 1000 classes with the ImageNet stem.  Images of at most 64
  pixels get the CIFAR stem instead (23,705,252 parameters for 100 classes).
- ``wrn28_10``: Wide-ResNet-28-10 (Zagoruyko & Komodakis 2016, arXiv
  1605.07146), pre-activation wide basic blocks, widths 16/160/320/640;
  36,479,194 parameters for 10 classes.  ``depth``/``widen``/``dropout``
  keywords give other WRN-d-k.
- ``vit_tiny`` / ``vit_small``: the paper's ViT-T / ViT-S (after
  aanna0701/SPT_LSA_ViT): patch 4, pre-norm blocks, class token, learned
  position embedding; dim 192, depth 9, 12 heads of 16 / dim 384, depth 12,
  6 heads of 64; MLP ratio 2.  ``drop_path`` (stochastic depth), ``spt``
  (Shifted Patch Tokenization) and ``lsa`` (Locality Self-Attention) keywords.
  2,709,796 / 14,276,068 parameters for 100 classes at 32×32 (2,747,248 /
  14,350,348 with SPT and LSA).
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

from samtune import schema
from samtune.checks import check_choice, check_int

# Inputs at most this large get the CIFAR stem (3×3 stride 1, no max-pool) with stem="auto":
# torchvision's ImageNet stem would shrink a 32×32 image to 1×1 by layer4.
CIFAR_STEM_MAX_SIZE = 64


def _kaiming_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv init torchvision's ResNet and the WRN reference use."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# ---------------------------------------------------------------------------
# ResNets (torchvision blocks, stem chosen by input size)


def _resnet_stem(model: nn.Module, in_channels: int, image_size: int, stem: str) -> nn.Module:
    """The stem ``stem`` (schema.RESNET_STEMS) on a torchvision ResNet: ``cifar`` a 3×3
    stride-1 conv without the max-pool, ``cifar_maxpool`` the same conv followed by
    torchvision's MaxPool2d(3, stride 2, padding 1), ``imagenet`` torchvision's own."""
    check_choice("stem", stem, schema.RESNET_STEMS)
    if stem == "auto":
        stem = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem in ("cifar", "cifar_maxpool"):
        model.conv1 = _kaiming_conv_(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False))
        if stem == "cifar":
            model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _kaiming_conv_(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False))
    return model


def resnet18(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, stem: str = "cifar"
) -> nn.Module:
    """CIFAR ResNet-18: torchvision's network with a 3×3 stride-1 stem and no
    max-pool (``stem="cifar_maxpool"`` keeps the max-pool; ``"imagenet"`` or ``"auto"``
    for larger images)."""
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
# Vision Transformer (Lee et al. 2021, "Vision Transformer for Small-Size
# Datasets", aanna0701/SPT_LSA_ViT, as used by GSAM_batch_inc models/ViT.py)


def _patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``b c (h p) (w p) -> b (h w) (p p c)``: the reference's patch layout, so
    a patch's features are ordered row, column, channel."""
    b, c, height, width = x.shape
    h, w = height // patch_size, width // patch_size
    x = x.reshape(b, c, h, patch_size, w, patch_size).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, patch_size * patch_size * c)


class DropPath(nn.Module):
    """Stochastic depth per sample: in training each sample's residual branch is
    zeroed with probability ``p`` and otherwise scaled by ``1 / (1 - p)``, which
    keeps its expectation; identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (torch.rand(shape, device=x.device) < keep).to(x.dtype)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchShifting(nn.Module):
    """The input and four copies shifted by ``shift`` pixels along the diagonals
    (zero fill), concatenated on channels: ``C`` channels in, ``5 C`` out."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, (h, w) = self.shift, x.shape[-2:]
        padded = nn.functional.pad(x, (s, s, s, s))
        # Crops of the padded image in the reference's order: left-up, right-up, left-bottom, right-bottom.
        crops = [padded[..., i:i + h, j:j + w] for i, j in ((0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s))]
        return torch.cat([x, *crops], dim=1)


class PatchEmbedding(nn.Module):
    """Flattened patches projected to ``dim``.  With Shifted Patch Tokenization
    the patches of the shifted stack (half a patch) are layer-normed first."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, spt: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        patch_dim = in_channels * patch_size * patch_size * (5 if spt else 1)
        self.shift = PatchShifting(patch_size // 2) if spt else nn.Identity()
        self.norm = nn.LayerNorm(patch_dim) if spt else nn.Identity()
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(_patches(self.shift(x), self.patch_size)))


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias.  With Locality Self-Attention
    the scale is a learnable temperature per head and a token may not attend to
    itself.  The attention is written out (no fused kernel) because the Hessian
    sharpness measures differentiate through it twice."""

    def __init__(self, dim: int, heads: int, head_dim: int, lsa: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.lsa = heads, head_dim, lsa
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.scale = head_dim**-0.5
        if lsa:
            self.temperature = nn.Parameter(torch.full((heads,), self.scale))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, _ = x.shape
        return self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = q @ k.transpose(-2, -1)
        if not self.lsa:
            return (logits * self.scale).softmax(dim=-1)
        logits = logits * self.temperature.view(1, -1, 1, 1)
        n = logits.shape[-1]
        diagonal = torch.eye(n, dtype=torch.bool, device=logits.device)
        return logits.masked_fill(diagonal, float("-inf")).softmax(dim=-1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights ``(batch, heads, tokens, tokens)`` for tokens ``x``."""
        q, k, _ = self._qkv(x)
        return self._weights(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        out = self._weights(q, k) @ v
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class Block(nn.Module):
    """Pre-norm transformer block; one stochastic-depth rate on both branches."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int, drop_path: float, lsa: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim, lsa)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _vit_init_(module: nn.Module) -> None:
    """The reference's init: Xavier-normal weights and zero biases for linear
    (and conv) layers, LayerNorm weight 1 and bias 0."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Vision Transformer: patch embedding (optionally SPT), class token,
    learned position embedding (both standard normal), ``depth`` pre-norm
    blocks, and a LayerNorm + linear head on the class token."""

    def __init__(
        self, *, num_classes: int, in_channels: int, image_size: int, patch_size: int, dim: int, depth: int,
        heads: int, mlp_ratio: int, drop_path: float = 0.0, spt: bool = False, lsa: bool = False
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size, spt)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(
            *(Block(dim, heads, dim // heads, mlp_ratio, drop_path, lsa) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_vit_init_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)[:, 0]))


def _check_vit_options(image_size: int, patch_size: int, drop_path: float, spt: bool, lsa: bool) -> None:
    check_int("patch_size", patch_size, 1)
    if image_size % patch_size:
        raise ValueError(f"image_size must be divisible by patch_size={patch_size!r}, got {image_size!r}")
    if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be a number in [0, 1), got {drop_path!r}")
    for key, value in (("spt", spt), ("lsa", lsa)):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}")
    if spt and patch_size < 2:
        # SPT shifts by half a patch: a 1-pixel patch would not shift at all.
        raise ValueError(f"spt needs patch_size >= 2, got {patch_size!r}")


def _vit(
    *, num_classes: int, in_channels: int, image_size: int, patch_size: int, drop_path: float, spt: bool, lsa: bool,
    **sizes: int
) -> ViT:
    _check_vit_options(image_size, patch_size, drop_path, spt, lsa)
    return ViT(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
        drop_path=float(drop_path), spt=spt, lsa=lsa, **sizes
    )


def vit_tiny(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4, drop_path: float = 0.0,
    spt: bool = False, lsa: bool = False
) -> nn.Module:
    """ViT-T of Harada & Iiduka: dim 192, depth 9, 12 heads of 16, MLP 384."""
    return _vit(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
        drop_path=drop_path, spt=spt, lsa=lsa, dim=192, depth=9, heads=12, mlp_ratio=2
    )


def vit_small(
    *, num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4, drop_path: float = 0.0,
    spt: bool = False, lsa: bool = False
) -> nn.Module:
    """ViT-S of Harada & Iiduka: dim 384, depth 12, 6 heads of 64, MLP 768."""
    return _vit(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
        drop_path=drop_path, spt=spt, lsa=lsa, dim=384, depth=12, heads=6, mlp_ratio=2
    )


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
    "vit_small": vit_small,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
}
_COMMON_ARGS = ("num_classes", "in_channels", "image_size")


def reinitialize_(model: nn.Module, init: str) -> nn.Module:
    """Re-draw the weights of ``model`` in place (from the global torch RNG):

    - ``default``: leave the architecture's own init (torchvision's ResNets and
      the WRN: Kaiming-normal fan-out convs; the ViTs: Xavier-normal linears,
      standard-normal position embedding and class token; the small CNN:
      PyTorch's layer init);
    - ``pytorch``: every layer's own ``reset_parameters()``, i.e. what a model
      with no init code gets (convs and linears Kaiming-uniform with a = √5, BN
      weight 1, bias 0): the paper's ResNets (``iiduka-researches/GSAM_batch_inc``
      ``models/resnet.py``);
    - ``kaiming``: convs Kaiming-normal fan-out (ReLU gain), BN weight 1 and bias 0,
      linears PyTorch's init: torchvision's ResNet recipe, on any architecture.

    Parameters that belong to no layer (a ViT's position embedding, class token
    and LSA temperatures) keep the architecture's init under every choice.
    """
    check_choice("init", init, schema.INITS)
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
    ``patch_size``/``drop_path``/``spt``/``lsa`` for the ViTs)."""
    check_choice("model", name, tuple(MODELS))
    for key, value in zip(_COMMON_ARGS, (num_classes, in_channels, image_size)):
        check_int(key, value, 1)
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
