"""Tests for zss.models (student + decoders) with timm's tiny random test_resnet / test_vit (CPU, offline)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from zss.models import ASPPDecoder, MLPDecoder, Student, plan_levels

D = 16  # teacher embedding width used in these tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("decoder", ["aspp", "mlp"])
def test_forward_shapes_and_unit_norm(backbone, decoder):
    model = Student(backbone, embed_dim=D, decoder=decoder, decoder_channels=24).eval()
    assert model.output_stride == 4
    for size in ((64, 64), (96, 128)):
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            emb = model(images)
        assert emb.shape == (2, D, size[0] // 4, size[1] // 4)
        assert emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, size[0] // 4, size[1] // 4))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("decoder", ["aspp", "mlp"])
def test_decoder_channels_come_from_feature_info(backbone, decoder):
    model = Student(backbone, embed_dim=D, decoder=decoder, decoder_channels=24)
    info = model.backbone.feature_info
    assert model.decoder.in_channels == info.channels() == model.feature_channels
    assert model.decoder.in_strides == info.reduction() == model.feature_strides
    feats = model.features(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == info.channels()
    assert [64 // f.shape[-1] for f in feats] == info.reduction()
    assert model.decode(feats).shape == (1, 24, 16, 16)


def test_out_indices_change_channels_and_output_stride():
    model = Student("test_resnet", embed_dim=D, decoder="aspp", decoder_channels=8, out_indices=(2, 3, 4))
    assert model.feature_strides == [8, 16, 32]
    assert model.decoder.in_channels == model.backbone.feature_info.channels()
    assert model.output_stride == 8  # finest available level
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, D, 8, 8)
    # the low-level 1x1 reduction is sized from the stride-8 level's channels, not hard-coded
    assert model.decoder.low_reduce[0].in_channels == model.feature_channels[0]


def test_plan_levels():
    assert plan_levels([2, 4, 8, 16, 32]) == [(1, 0), (2, 0), (3, 0), (4, 0)]  # stem at stride 2 dropped
    assert plan_levels([16, 16, 16]) == [(0, 2), (1, 1), (2, 0)]  # ViT pyramid: 4/8/16
    assert plan_levels([16]) == [(0, 2)]
    assert plan_levels([14, 14]) == [(0, 1), (1, 0)]  # patch 14 -> 7/14
    with pytest.raises(ValueError, match="min_stride"):
        plan_levels([2], min_stride=4)


def test_decoders_standalone_with_arbitrary_channels():
    chans, strides = [5, 7, 11], [8, 16, 32]
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip(chans, strides)]
    aspp = ASPPDecoder(chans, strides, channels=12, dilations=(1, 2, 3), low_channels=6)
    mlp = MLPDecoder(chans, strides, channels=12)
    assert aspp(feats).shape == (2, 12, 8, 8) and aspp.output_stride == 8
    assert mlp(feats).shape == (2, 12, 8, 8) and mlp.output_stride == 8
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        mlp(feats[:2])


def test_logits_equal_scaled_cosine():
    model = Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=8, logit_scale=12.5)
    emb = model(torch.randn(2, 3, 64, 64)).detach()
    text = torch.randn(5, D)
    logits = model.logits(emb, text)
    assert logits.shape == (2, 5, 16, 16)
    manual = 12.5 * F.cosine_similarity(emb.unsqueeze(1), text[None, :, :, None, None], dim=2)
    torch.testing.assert_close(logits, manual)
    assert "logit_scale" not in model.state_dict() and not model.logit_scale.requires_grad
    assert Student("test_resnet", embed_dim=D, decoder_channels=8).logit_scale.item() == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="embed_dim"):
        model.logits(emb, torch.randn(5, D + 1))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_param_groups_partition(backbone):
    model = Student(backbone, embed_dim=D, decoder="aspp", decoder_channels=8)
    groups = model.param_groups(lr=1e-3, head_lr_mult=10.0, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)) == len(trainable) and set(seen) == trainable
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head_ids = {id(p) for m in (model.decoder, model.proj) for p in m.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if g["name"].startswith("backbone"):
            assert ids <= backbone_ids and g["lr"] == pytest.approx(1e-3)
        else:
            assert ids <= head_ids and g["lr"] == pytest.approx(1e-2)
        if g["name"].endswith("no_decay"):
            assert g["weight_decay"] == 0.0
        else:
            assert g["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in g["params"])
    nd = {id(p) for g in groups if g["name"].endswith("no_decay") for p in g["params"]}
    assert all(id(p) in nd for p in model.parameters() if p.ndim <= 1)
    if backbone == "test_vit":  # timm's no_weight_decay() params
        assert id(model.backbone.model.pos_embed) in nd
    # usable by a real optimizer
    torch.optim.AdamW(groups)
    # frozen params are left out
    model.backbone.requires_grad_(False)
    assert all(g["name"].startswith("head") for g in model.param_groups(lr=1e-3))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_gradient_flows_to_backbone_and_head(backbone):
    model = Student(backbone, embed_dim=D, decoder="aspp", decoder_channels=8).train()
    text = F.normalize(torch.randn(3, D), dim=-1)
    logits = model.logits(model(torch.randn(2, 3, 64, 64)), text)
    loss = F.cross_entropy(logits, torch.randint(0, 3, (2, 16, 16)))
    loss.backward()
    for part in (model.backbone, model.decoder, model.proj):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), f"unused parameters in {type(part).__name__}"
        assert any(g.abs().sum() > 0 for g in grads)


def test_unknown_backbone_error_message():
    with pytest.raises(ValueError) as exc:
        Student("resnet5O", embed_dim=D)
    msg = str(exc.value)
    assert "resnet5O" in msg and "model.backbone=" in msg and "resnet50" in msg


def test_unknown_decoder_error_message():
    with pytest.raises(ValueError, match="model.decoder"):
        Student("test_resnet", embed_dim=D, decoder="fpn")


def test_pretrained_from_local_file(tmp_path):
    ref = timm.create_model("test_resnet")  # plain (non-features_only) model, as timm ships weights
    path = tmp_path / "test_resnet.pth"
    torch.save(ref.state_dict(), path)
    model = Student("test_resnet", embed_dim=D, decoder_channels=8, pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1[0].weight, ref.conv1[0].weight)
    torch.testing.assert_close(model.backbone.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)
    rand = Student("test_resnet", embed_dim=D, decoder_channels=8, pretrained=False)
    assert not torch.equal(rand.backbone.conv1[0].weight, ref.conv1[0].weight)


def test_pretrained_local_vit_file(tmp_path):
    ref = timm.create_model("test_vit")
    path = tmp_path / "test_vit.pth"
    torch.save(ref.state_dict(), path)
    model = Student("test_vit", embed_dim=D, decoder_channels=8, pretrained=path)
    torch.testing.assert_close(model.backbone.model.blocks[2].attn.qkv.weight, ref.blocks[2].attn.qkv.weight)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, D, 24, 24)


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        Student("test_resnet", embed_dim=D, pretrained=tmp_path / "nope.pth")


def test_pretrained_bad_file_and_fetch_failure(tmp_path, monkeypatch):
    bad = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match=r"model.pretrained=<local file>"):
        Student("test_resnet", embed_dim=D, pretrained=bad)

    # simulate an offline hub without touching the network
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("offline: cannot reach huggingface.co")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"model.pretrained=<local file>") as exc:
        Student("test_resnet", embed_dim=D, pretrained=True)
    assert "test_resnet" in str(exc.value) and "offline" in str(exc.value)


def _model_from_config(name, overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", *overrides])
    return instantiate(cfg.model, embed_dim=D), cfg.model


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18"])
@pytest.mark.parametrize(
    "name, stride, rates", [("deeplabv3plus_r101", 16, (6, 12, 18)), ("deeplabv3plus_r101_os8", 8, (12, 24, 36))]
)
def test_deeplabv3plus_configs_dilate_to_their_output_stride(backbone, name, stride, rates):
    # the shipped DeepLabV3+ presets, with a small random-init ResNet in place of R-101 (same timm family)
    model, cfg = _model_from_config(
        name, [f"model.backbone={backbone}", "model.pretrained=false", "model.decoder_channels=8"]
    )
    assert cfg.backbone_output_stride == stride
    feats = model.features(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (64 // stride, 96 // stride)  # deepest map at H/stride, not H/32
    assert model.backbone_output_stride == stride and model.feature_strides[-1] == stride
    assert model.decoder.dilations == rates
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, D, 16, 24)  # decoder output still at stride 4


def test_backbone_output_stride_errors():
    with pytest.raises(ValueError, match="model.backbone_output_stride"):
        Student("test_vit", embed_dim=D, backbone_output_stride=16)  # ViTs take no output_stride
    with pytest.raises(ValueError, match="model.backbone_output_stride"):
        Student("test_resnet", embed_dim=D, backbone_output_stride=4)
    with pytest.raises(ValueError, match="given twice"):
        Student("test_resnet", embed_dim=D, backbone_output_stride=16, backbone_kwargs=dict(output_stride=8))
