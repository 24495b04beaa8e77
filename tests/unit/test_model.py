import pytest
import torch
import torchvision
from torch import nn

from ssd_ds.model import build_model
from ssd_ds.model_config import build_model_config, cpu_small, feature_sizes, mlperf


def test_mlperf_model_size_and_shapes():
    model = build_model(mlperf())
    # Separate loc/conf heads (not fused): SPEC section 1's 19.97 M.
    assert sum(p.numel() for p in model.parameters()) == 19_972_534
    locs, logits = model(torch.randn(2, 3, 300, 300))
    assert locs.shape == (2, 8732, 4)
    assert logits.shape == (2, 8732, 81)
    assert feature_sizes(mlperf()) == (38, 19, 10, 5, 3, 1)


def test_layer3_first_block_has_stride_one():
    trunk = build_model(mlperf()).backbone
    block = trunk.layer3[0]
    assert block.conv1.stride == (1, 1)
    assert block.downsample[0].stride == (1, 1)
    assert trunk(torch.randn(1, 3, 300, 300)).shape == (1, 256, 38, 38)


def test_extra_blocks_and_heads_match_spec():
    model = build_model(mlperf())
    expected = [(256, 256, 512, 2, 1), (512, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 1, 0),
                (256, 128, 256, 1, 0)]
    for block, (cin, mid, out, stride, pad) in zip(model.extras, expected):
        c1, c3 = block[0], block[2]
        assert (c1.in_channels, c1.out_channels, c1.kernel_size) == (cin, mid, (1, 1))
        assert (c3.out_channels, c3.stride, c3.padding) == (out, (stride, stride), (pad, pad))
        assert c1.bias is not None and c3.bias is not None
    assert [h.out_channels for h in model.loc] == [nd * 4 for nd in (4, 6, 6, 6, 4, 4)]
    assert [h.out_channels for h in model.conf] == [nd * 81 for nd in (4, 6, 6, 6, 4, 4)]


def test_output_layout_is_reference_order():
    # Anchor index within level 0 is d*H*W + i*W + j, conv channel coord*nd + d (SPEC section 1).
    model = build_model(mlperf()).eval()
    captured = {}
    model.loc[0].register_forward_hook(lambda m, i, o: captured.__setitem__("loc0", o))
    with torch.no_grad():
        locs, _ = model(torch.randn(1, 3, 300, 300))
    raw = captured["loc0"][0]  # [nd*4, 38, 38]
    nd, d, i, j, coord = 4, 2, 5, 7, 3
    assert locs[0, d * 38 * 38 + i * 38 + j, coord] == raw[coord * nd + d, i, j]


def test_cpu_preset_is_same_family_and_small():
    cfg = cpu_small(num_classes=6)
    model = build_model(cfg)
    locs, logits = model(torch.randn(3, 3, cfg.input_size, cfg.input_size))
    assert locs.shape == (3, cfg.anchors.num_anchors, 4)
    assert logits.shape == (3, cfg.anchors.num_anchors, 6)
    assert cfg.anchors.feat_sizes == feature_sizes(cfg)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


@pytest.mark.parametrize("preset", ["cpu_small", "cpu_160", "cpu_160_s4"])
def test_gradients_reach_every_parameter(preset):
    cfg = build_model_config(preset, num_classes=4)
    model = build_model(cfg)
    locs, logits = model(torch.randn(2, 3, cfg.input_size, cfg.input_size))
    (locs.square().mean() + logits.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _resnet34_file(tmp_path, state):
    path = tmp_path / "resnet34-333f7ec4.pth"
    torch.save(state, path)
    return path


def test_backbone_loads_torchvision_resnet34(tmp_path):
    reference = torchvision.models.resnet34()
    path = _resnet34_file(tmp_path, reference.state_dict())
    model = build_model(mlperf(), backbone_weights=str(path))
    assert torch.equal(model.backbone.layer3[5].conv2.weight, reference.layer3[5].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, reference.bn1.running_var)


def test_backbone_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(mlperf(), backbone_weights=str(path))


def test_backbone_truncated_file_names_it(tmp_path):
    path = _resnet34_file(tmp_path, torchvision.models.resnet34().state_dict())
    path.write_bytes(path.read_bytes()[: 100_000])
    with pytest.raises(ValueError, match="resnet34-333f7ec4.pth.*cannot be read"):
        build_model(mlperf(), backbone_weights=str(path))


def test_backbone_wrong_keys_names_it(tmp_path):
    path = _resnet34_file(tmp_path, torchvision.models.resnet18().state_dict())
    with pytest.raises(ValueError, match="resnet34-333f7ec4.pth.*not a torchvision resnet34"):
        build_model(mlperf(), backbone_weights=str(path))


def test_cpu_160_has_its_feature_maps_and_normalised_extras():
    cfg = build_model_config("cpu_160", num_classes=5)
    assert (cfg.input_size, cfg.anchors.feat_sizes, cfg.anchors.num_anchors) == (160, (20, 10, 5, 3, 2), 2420)
    model = build_model(cfg)
    for block in model.extras:  # conv (no bias) -> BN -> ReLU, twice
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
        assert block[0].bias is None and block[3].bias is None
    locs, logits = model(torch.randn(2, 3, 160, 160))
    assert locs.shape == (2, 2420, 4) and logits.shape == (2, 2420, 5)
    # The SPEC's extras stay as they were: conv(bias) -> ReLU, twice, the same state-dict keys.
    assert [type(m) for m in build_model(cpu_small()).extras[0]] == [nn.Conv2d, nn.ReLU] * 2


def test_stride4_level_adds_a_finer_first_level_and_leaves_the_rest():
    cfg = build_model_config("cpu_160_s4", num_classes=5)
    base = build_model_config("cpu_160", num_classes=5)
    assert cfg.anchors.feat_sizes == (40,) + base.anchors.feat_sizes
    assert cfg.anchors.steps[0] == 4 and cfg.anchors.aspect_ratios[0] == ()  # two square boxes per cell
    assert cfg.anchors.num_anchors == 2 * 40 * 40 + base.anchors.num_anchors == 5620
    assert cfg.anchors.scales[0] < base.anchors.scales[0] and cfg.anchors.scales[1:] == base.anchors.scales
    model = build_model(cfg)
    locs, logits = model(torch.randn(2, 3, 160, 160))
    assert locs.shape == (2, 5620, 4) and logits.shape == (2, 5620, 5)
    # The level's outputs come first, in the reference layout: anchor d*H*W + i*W + j of level 0.
    captured = {}
    model.eval().conf[0].register_forward_hook(lambda m, i, o: captured.__setitem__("conf0", o))
    with torch.no_grad():
        _, logits = model(torch.randn(1, 3, 160, 160))
    d, i, j, c = 1, 30, 7, 3
    assert logits[0, d * 1600 + i * 40 + j, c] == captured["conf0"][0, c * 2 + d, i, j]
    # Models without it keep their modules and state-dict keys.
    assert not any(k.startswith("stride4.") for k in build_model(base).state_dict())


def test_stride4_level_needs_an_input_side_divisible_by_8():
    from dataclasses import replace

    with pytest.raises(ValueError, match="divisible by 8"):
        replace(build_model_config("cpu_160_s4"), input_size=156, anchors=None)
