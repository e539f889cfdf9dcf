"""Model registry: published parameter counts, architecture details, forward shapes."""

import pytest
import torch
from torch import nn

from samtune.models import create_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: on a shared 2-core machine oversubscription costs more than it gains.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wrn28_10():
    torch.manual_seed(0)
    return create_model("wrn28_10", num_classes=10).eval()


# Published counts: ResNet-18 (CIFAR stem) 11,173,962 for 10 classes and 11.22M
# for 100; WRN-28-10 36.5M (Zagoruyko & Komodakis 2016, Table 1), 36,479,194 in
# the PyTorch reference ports for 10 classes; torchvision's ResNet-50 model
# card: 25,557,032.  The ViTs are counted from their layer shapes below.
@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", dict(num_classes=10), 11_173_962),
        ("resnet18", dict(num_classes=100), 11_220_132),
        ("resnet50", dict(num_classes=1000, image_size=224), 25_557_032),
    ],
)
def test_published_parameter_counts(name, kwargs, expected):
    assert n_params(create_model(name, **kwargs)) == expected


def test_wrn28_10_published_counts(wrn28_10):
    assert n_params(wrn28_10) == 36_479_194 == wrn_closed_form(28, 10, 10)
    assert wrn_closed_form(28, 10, 100) == 36_536_884


def test_cifar_resnet_counts_follow_from_torchvision_imagenet_counts():
    # torchvision resnet18 / resnet50 have 11,689,512 / 25,557,032 parameters with the
    # 7x7x3x64 stem and a 1000-way head; the CIFAR stem is 3x3x3x64.
    stem_change = 3 * 3 * 3 * 64 - 7 * 7 * 3 * 64
    assert n_params(create_model("resnet18", num_classes=1000)) == 11_689_512 + stem_change
    head_change = (2048 * 100 + 100) - (2048 * 1000 + 1000)
    assert n_params(create_model("resnet50", num_classes=100)) == 25_557_032 + stem_change + head_change


def wrn_closed_form(depth, widen, num_classes, in_channels=3):
    """Parameter count of a pre-activation WRN, written out block by block."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    total = in_channels * 16 * 9
    for c_in, c in zip(widths[:-1], widths[1:]):
        first = 2 * c_in + 9 * c_in * c + 2 * c + 9 * c * c + (c_in * c if c_in != c else 0)
        total += first + (n - 1) * (2 * c + 9 * c * c + 2 * c + 9 * c * c)
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize(("depth", "widen"), [(16, 4), (10, 1), (22, 2)])
def test_wrn_count_matches_closed_form(depth, widen):
    model = create_model("wrn28_10", num_classes=100, in_channels=1, depth=depth, widen=widen)
    assert n_params(model) == wrn_closed_form(depth, widen, 100, in_channels=1)


def test_wrn_kaiming_fan_out_init(wrn28_10):
    model = wrn28_10
    conv = model.block2[0].conv1  # 160 -> 320: fan_in 1440, fan_out 2880
    expected_std = (2.0 / (320 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    bn = model.block3[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(model.fc.bias == 0)


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(16, 32, 2), (32, 32, 1)])
def test_wide_block_is_pre_activation(c_in, c_out, stride):
    """Forward of one block against the WRN reference written with torch.nn.functional:
    o = conv2(relu(bn2(conv1(a)))) + (a if identity else shortcut(a) with a = relu(bn1(x)))."""
    from torch.nn import functional as F

    from samtune.models import WideBasicBlock

    block = WideBasicBlock(c_in, c_out, stride, dropout=0.0).eval()
    for bn in (block.bn1, block.bn2):  # non-trivial running statistics and affine terms
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(2, c_in, 8, 8)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    pre = F.relu(bn(x, block.bn1))
    out = F.conv2d(pre, block.conv1.weight, stride=stride, padding=1)
    out = F.conv2d(F.relu(bn(out, block.bn2)), block.conv2.weight, padding=1)
    shortcut = x if c_in == c_out else F.conv2d(pre, block.shortcut.weight, stride=stride)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + shortcut)


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match=r"depth .*27"):
        create_model("wrn28_10", num_classes=10, depth=27)


def test_resnet18_has_cifar_stem():
    model = create_model("resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape)

        return hook

    model.layer1.register_forward_hook(record("layer1"))
    model.layer4.register_forward_hook(record("layer4"))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # no down-sampling before layer1; three stride-2 stages after it
    assert shapes == {"layer1": (2, 64, 32, 32), "layer4": (2, 512, 4, 4)}


def test_resnet50_stem_follows_image_size():
    assert isinstance(create_model("resnet50", num_classes=10, image_size=32).maxpool, nn.Identity)
    large = create_model("resnet50", num_classes=10, image_size=224)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    forced = create_model("resnet18", num_classes=10, image_size=32, stem="imagenet")
    assert forced.conv1.stride == (2, 2)


@pytest.mark.parametrize(
    ("name", "batch", "in_channels", "image_size", "num_classes"),
    [
        ("resnet18", 2, 3, 32, 10),
        ("resnet18", 2, 1, 28, 7),
        ("resnet50", 2, 1, 32, 100),
        ("vit_tiny", 2, 3, 32, 100),
        ("vit_tiny", 2, 1, 8, 10),
        ("small_cnn", 4, 1, 8, 10),
        ("small_cnn", 4, 3, 32, 3),
    ],
)
def test_forward_shape(name, batch, in_channels, image_size, num_classes):
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, image_size, image_size))
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()


def test_wrn28_10_forward_shape(wrn28_10):
    with torch.no_grad():
        assert wrn28_10(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_patch_size_must_divide_image():
    with pytest.raises(ValueError, match=r"image_size .*30"):
        create_model("vit_tiny", num_classes=10, image_size=30)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="resnet18, wrn28_10, vit_tiny, vit_small, resnet50, small_cnn; got 'resnet9'"):
        create_model("resnet9", num_classes=10)
    with pytest.raises(ValueError, match="num_classes .*0"):
        create_model("small_cnn", num_classes=0)
    with pytest.raises(ValueError, match="in_channels .*2.5"):
        create_model("small_cnn", num_classes=10, in_channels=2.5)
    with pytest.raises(ValueError, match="unknown option.*widen.*'resnet18'"):
        create_model("resnet18", num_classes=10, widen=2)
    with pytest.raises(ValueError, match="stem .*'tiny'"):
        create_model("resnet18", num_classes=10, stem="tiny")


def test_small_cnn_is_small_and_has_batchnorm():
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    assert 10_000 < n_params(model) < 100_000
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2


def test_small_cnn_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    as_images = lambda a: torch.tensor(a / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    x_train, x_test = as_images(x_train), as_images(x_test)
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        model.train()
        for idx in torch.randperm(len(x_train), generator=generator).split(32):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        test_error = (model(x_test).argmax(1) != y_test).float().mean().item()
    assert test_error < 0.05


def _conv_square_norms(model):
    return [(conv, float(conv.weight.detach().pow(2).sum())) for conv in model.modules()
            if isinstance(conv, nn.Conv2d)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_pytorch_init_is_every_layers_default_init(name):
    """The paper's ResNets have no init code: each conv is PyTorch's default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so E||W||² = numel / (3 fan_in) = out/3."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=100, init="pytorch")
    convs = _conv_square_norms(model)
    expected = sum(conv.out_channels / 3 for conv, _ in convs)
    assert sum(sq for _, sq in convs) == pytest.approx(expected, rel=0.02)
    # and layer by layer against freshly built torch layers of the same shapes
    torch.manual_seed(1)
    for conv, sq in convs:
        fresh = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=False)
        if fresh.weight.numel() >= 4096:  # enough weights for a 10 % agreement
            assert sq == pytest.approx(float(fresh.weight.detach().pow(2).sum()), rel=0.1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


@pytest.mark.parametrize("init", ["default", "kaiming"])
def test_kaiming_init_is_torchvisions(init):
    """Kaiming-normal fan-out with ReLU gain: Var = 2 / (out k²), so E||W||² = 2 in."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, init=init)
    convs = _conv_square_norms(model)
    expected = sum(2 * conv.in_channels for conv, _ in convs)
    assert sum(sq for _, sq in convs) == pytest.approx(expected, rel=0.02)


def test_init_choice_is_validated():
    with pytest.raises(ValueError, match="init must be one of default, pytorch, kaiming; got 'xavier'"):
        create_model("small_cnn", num_classes=10, in_channels=1, image_size=8, init="xavier")


# ---------------------------------------------------------------------------
# Vision Transformers (GSAM_batch_inc models/create_models.py: ViT-T and ViT-S)

VIT_SIZES = {  # dim, depth, heads, head dim; MLP ratio 2 for both
    "vit_tiny": (192, 9, 12, 16),
    "vit_small": (384, 12, 6, 64),
}


def vit_closed_form(name, num_classes, *, image_size=32, in_channels=3, patch=4, spt=False, lsa=False):
    """Parameter count of the reference ViT, written out layer by layer."""
    dim, depth, heads, head_dim = VIT_SIZES[name]
    inner, hidden = heads * head_dim, 2 * dim
    block = (
        2 * 2 * dim  # two LayerNorms
        + dim * 3 * inner  # qkv, no bias
        + inner * dim + dim  # output projection
        + dim * hidden + hidden + hidden * dim + dim  # MLP
        + (heads if lsa else 0)  # LSA temperature per head
    )
    patch_dim = in_channels * patch * patch
    embed = 2 * 5 * patch_dim + 5 * patch_dim * dim + dim if spt else patch_dim * dim + dim
    tokens = (image_size // patch) ** 2 + 1
    head = 2 * dim + dim * num_classes + num_classes
    return depth * block + embed + tokens * dim + dim + head


def _vit(name="vit_tiny", num_classes=10, **kwargs):
    return create_model(name, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
@pytest.mark.parametrize(("spt", "lsa"), [(False, False), (True, False), (False, True), (True, True)])
def test_vit_count_matches_closed_form(name, spt, lsa):
    assert n_params(_vit(name, 100, spt=spt, lsa=lsa)) == vit_closed_form(name, 100, spt=spt, lsa=lsa)


def test_vit_counts_at_100_classes():
    # The numbers the module docstring quotes.
    assert vit_closed_form("vit_tiny", 100) == 2_709_796
    assert vit_closed_form("vit_tiny", 100, spt=True, lsa=True) == 2_747_248
    assert vit_closed_form("vit_small", 100) == 14_276_068
    assert vit_closed_form("vit_small", 100, spt=True, lsa=True) == 14_350_348


def test_vit_count_on_digits():
    model = _vit(in_channels=1, image_size=8, spt=True, lsa=True)
    assert n_params(model) == vit_closed_form("vit_tiny", 10, image_size=8, in_channels=1, spt=True, lsa=True)


@pytest.mark.parametrize(
    ("name", "in_channels", "image_size", "options"),
    [
        ("vit_tiny", 3, 32, dict()),
        ("vit_tiny", 3, 32, dict(spt=True, lsa=True, drop_path=0.1)),
        ("vit_tiny", 1, 8, dict(spt=True, lsa=True, drop_path=0.1)),
        ("vit_small", 3, 32, dict(spt=True, lsa=True, drop_path=0.1)),
    ],
)
def test_vit_forward_and_backward(name, in_channels, image_size, options):
    model = _vit(name, 7, in_channels=in_channels, image_size=image_size, **options).train()
    out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for name_, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name_


def test_patch_embedding_is_a_strided_conv_in_reference_layout():
    """Patch features are ordered (row, column, channel) as in the reference's
    ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``: the projection is a stride-4 conv."""
    embed = _vit(in_channels=3).patch_embed
    x = torch.randn(2, 3, 8, 12)
    weight = embed.proj.weight.reshape(192, 4, 4, 3).permute(0, 3, 1, 2)
    conv = nn.functional.conv2d(x, weight, embed.proj.bias, stride=4)  # (2, 192, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(embed(x), conv.flatten(2).transpose(1, 2))


def _shifted_by_hand(x, dy, dx):
    """out[..., i, j] = x[..., i + dy, j + dx], zero where that falls outside."""
    out = torch.zeros_like(x)
    height, width = x.shape[-2:]
    for i in range(height):
        for j in range(width):
            if 0 <= i + dy < height and 0 <= j + dx < width:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


def test_spt_shifts_half_a_patch_diagonally_with_zero_fill():
    from samtune.models import PatchShifting

    model = _vit(spt=True)
    shifting = model.patch_embed.shift
    assert isinstance(shifting, PatchShifting) and shifting.shift == 2  # patch 4 // 2
    x = torch.randn(2, 3, 5, 6)
    out = shifting(x)
    assert out.shape == (2, 15, 5, 6)
    expected = [x] + [_shifted_by_hand(x, dy, dx) for dy, dx in ((-2, -2), (-2, 2), (2, -2), (2, 2))]
    torch.testing.assert_close(out, torch.cat(expected, dim=1), rtol=0, atol=0)
    assert isinstance(model.patch_embed.norm, nn.LayerNorm) and model.patch_embed.norm.normalized_shape == (240,)


def _tokens(model, x):
    tokens = model.patch_embed(x)
    return torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed


@pytest.mark.parametrize("lsa", [False, True])
def test_lsa_masks_the_diagonal_and_learns_a_temperature_per_head(lsa):
    model = _vit(in_channels=1, image_size=8, lsa=lsa)
    block = model.blocks[0]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        attn = block.attn.attention_map(block.norm1(_tokens(model, x)))
    assert attn.shape == (2, 12, 5, 5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 12, 5))
    diagonal = attn.diagonal(dim1=-2, dim2=-1)
    assert torch.all(diagonal == 0) if lsa else torch.all(diagonal > 0)
    temperatures = [p for n, p in model.named_parameters() if n.endswith("attn.temperature")]
    assert len(temperatures) == (9 if lsa else 0)
    if lsa:
        temperature = block.attn.temperature
        assert isinstance(temperature, nn.Parameter) and temperature.shape == (12,)
        torch.testing.assert_close(temperature.detach(), torch.full((12,), 16**-0.5))
        model(x).sum().backward()
        assert temperature.grad is not None and temperature.grad.abs().sum() > 0


def test_attention_output_is_the_weighted_values_projected():
    attn = _vit(lsa=True).blocks[0].attn
    x = torch.randn(2, 5, 192)
    v = (x @ attn.qkv.weight.T)[..., 384:].reshape(2, 5, 12, 16).transpose(1, 2)
    mixed = (attn.attention_map(x) @ v).transpose(1, 2).reshape(2, 5, 192)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(mixed))


def test_drop_path_is_per_sample_and_unbiased():
    from samtune.models import DropPath

    drop = DropPath(0.3)
    x = torch.ones(20_000, 3, 2)
    assert drop.eval()(x) is x
    torch.manual_seed(1)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one draw per sample
    values = per_sample[:, 0]
    assert torch.all((values == 0) | torch.isclose(values, torch.tensor(1 / 0.7)))
    kept, n, p = int((values > 0).sum()), len(values), 0.7
    assert abs(kept - n * p) < 5 * (n * p * (1 - p)) ** 0.5  # binomial, 5 standard deviations
    assert DropPath(0.0).train()(x) is x


def test_vit_drop_path_rate_is_the_same_in_every_block_and_off_in_eval():
    torch.manual_seed(0)
    model = _vit(in_channels=1, image_size=8, drop_path=0.2)
    assert [block.drop_path.p for block in model.blocks] == [0.2] * 9
    plain = _vit(in_channels=1, image_size=8)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))
        assert not torch.allclose(model.train()(x), plain.train()(x))


def test_vit_default_init_is_the_references():
    torch.manual_seed(0)
    model = _vit(spt=True, lsa=True)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            expected = (2 / (fan_in + fan_out)) ** 0.5
            rel = 5 / (2 * module.weight.numel()) ** 0.5  # 5 standard errors of a sample std
            assert module.weight.std().item() == pytest.approx(expected, rel=rel), name
            assert module.bias is None or not module.bias.any(), name
        elif isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and not module.bias.any(), name
    assert model.blocks[0].attn.qkv.bias is None
    pos = model.pos_embed
    assert pos.shape == (1, 65, 192)
    assert pos.std().item() == pytest.approx(1.0, abs=5 / (2 * pos.numel()) ** 0.5)
    assert abs(pos.mean().item()) < 5 / pos.numel() ** 0.5
    assert model.cls_token.shape == (1, 1, 192)


@pytest.mark.parametrize("init", ["pytorch", "kaiming"])
def test_vit_reinitialization_redraws_layers_only(init):
    torch.manual_seed(0)
    default = _vit(spt=True, lsa=True)
    torch.manual_seed(0)
    model = _vit(spt=True, lsa=True, init=init)
    assert torch.equal(model.pos_embed, default.pos_embed) and torch.equal(model.cls_token, default.cls_token)
    qkv = model.blocks[0].attn.qkv.weight  # PyTorch's Linear init: std 1 / sqrt(3 fan_in)
    assert qkv.std().item() == pytest.approx((1 / (3 * 192)) ** 0.5, rel=0.02)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(drop_path=1.5), r"drop_path must be a number in \[0, 1\), got 1.5"),
        (dict(drop_path=1.0), r"drop_path .*\[0, 1\), got 1.0"),
        (dict(drop_path=-0.1), r"drop_path .*got -0.1"),
        (dict(drop_path=True), r"drop_path .*got True"),
        (dict(drop_path="0.1"), r"drop_path .*got '0.1'"),
        (dict(spt="yes"), r"spt must be True or False, got 'yes'"),
        (dict(lsa=1), r"lsa must be True or False, got 1"),
        (dict(patch_size=0), r"patch_size must be an int >= 1, got 0"),
        (dict(patch_size=1, spt=True), r"spt needs patch_size >= 2, got 1"),
        (dict(dropout=0.1), r"unknown option.*dropout.*allowed: patch_size, drop_path, spt, lsa"),
    ],
)
def test_vit_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        _vit("vit_small", **options)
