"""CLIP-RC / ZegCLIP (zss.methods.clip_rc, zss.teachers.prompted, zss.models.clip_rc_decoder) with tiny random
open_clip CLIPs: the encoder's attention mask and its equivalence with open_clip, the frozen CLIP, shapes at 512²,
region-query fusion, the recovery loss, seen_bias in probability units, and checkpoints that need CLIP's weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zss.cli.common import CONFIG_DIR, load_for_inference
from zss.cli.eval import evaluate_checkpoint
from zss.cli.train import train
from zss.data.classes import get_benchmark
from zss.engine.evaluate import make_logits_fn
from zss.methods.clip_rc import ClipRC, focal_dice_ignore_as_negative, st_pseudo_labels
from zss.models.clip_rc_decoder import RegionTextDecoder, fuse_regions, recovery_loss
from zss.teachers.clip import FrozenCLIP, TeacherWeightsNotFoundError, build_tiny_clip, tiny_clip_cfg
from zss.teachers.prompted import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PromptedCLIPEncoder,
    region_attention_mask,
    region_windows,
)

VOC = list(get_benchmark("voc20").classes)
VOC_UNSEEN = sorted(get_benchmark("voc20").unseen)


def _clip(patch=16, width=32, layers=1, embed_dim=32, dense_mode="tokens", seed=0):
    return build_tiny_clip(
        embed_dim=embed_dim,
        image_size=64,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=2,
        dense_mode=dense_mode,
        seed=seed,
    )


def _method(clip=None, classnames=VOC, unseen=VOC_UNSEEN, **kw):
    """A ClipRC on a tiny CLIP; random unit text embeds (the text tower is exercised by the CLI test)."""
    clip = clip or _clip()
    torch.manual_seed(0)
    text = F.normalize(torch.randn(len(classnames), clip.embed_dim), dim=-1)
    return ClipRC.from_flat(
        None, clip, classnames, unseen, text_embeds=text, num_prompts=kw.pop("num_prompts", 3), **kw
    )


# ------------------------------------------------------------------------------------------ attention mask
def test_attention_mask_structure_exact():
    N, h, w, G = 2, 8, 8, 4
    m = region_attention_mask(N, (h, w), G)
    p0, r0 = 1 + N, 1 + N + h * w
    L = r0 + G * G
    assert m.shape == (L, L) and set(m.unique().tolist()) <= {0.0, float("-inf")}

    def region_of(t):  # independent: 8x8 grid, 4x4 regions of 2x2 patches
        p = t - p0
        return (p // w) // 2 * G + (p % w) // 2

    for q in range(L):
        for k in range(L):
            q_reg, k_reg = q >= r0, k >= r0
            if not q_reg and not k_reg:
                want = True  # CLS, prompts and patches see each other
            elif q_reg and k_reg:
                want = q == k  # a region token sees itself only among regions
            elif q_reg:  # region query -> patch key in its window only (never CLS / prompts)
                want = p0 <= k < r0 and region_of(k) == q - r0
            else:  # patch query -> its own region token; CLS / prompts never see regions
                want = p0 <= q < r0 and region_of(q) == k - r0
            assert (m[q, k] == 0) == want, (q, k)


def test_region_windows_cover_uneven_grids_once():
    wins = region_windows((14, 10), 4)
    cover = torch.zeros(14, 10, dtype=torch.long)
    for r0, r1, c0, c1 in wins:
        assert r1 > r0 and c1 > c0
        cover[r0:r1, c0:c1] += 1
    assert bool((cover == 1).all())
    assert region_windows((32, 32), 4)[5] == (8, 16, 8, 16)  # the public code's 8x8 windows at 512 px
    with pytest.raises(ValueError, match="region grid"):
        region_windows((3, 8), 4)


# ------------------------------------------------------------------------------------------ encoder
def test_zero_prompts_no_regions_reproduce_open_clip():
    clip = _clip(patch=8, width=64, layers=2, dense_mode="tokens")
    enc = PromptedCLIPEncoder(clip, num_prompts=0, region_grid=0, pos_interp="bicubic", cls_input="clip").eval()
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)  # native size (8x8 patches)
    with torch.no_grad():
        out = enc(x)
        ref_cls = F.normalize(clip.model.encode_image(x).float(), dim=-1)
        ref = clip(x)
    torch.testing.assert_close(out["cls"], ref_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["dense"], ref["dense"], atol=1e-5, rtol=1e-5)
    assert out["regions"] is None
    x2 = torch.randn(1, 3, 48, 80, generator=g)  # other size: interpolated positions (FrozenCLIP's bicubic)
    with torch.no_grad():
        out2, ref2 = enc(x2), clip(x2)
    torch.testing.assert_close(out2["cls"], ref2["cls"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2["dense"], ref2["dense"], atol=1e-5, rtol=1e-5)


def test_region_tokens_start_as_cls_input_and_see_only_their_window():
    clip = _clip(patch=16, width=32, layers=2)
    enc = PromptedCLIPEncoder(clip, num_prompts=2, region_grid=4)
    v = clip.visual
    torch.testing.assert_close(enc.region_tokens[3], v.class_embedding + v.positional_embedding[0])
    # one block: a region token attends only to its own window's patches (and itself)
    enc1 = PromptedCLIPEncoder(_clip(patch=16, width=32, layers=1), num_prompts=2, region_grid=4).eval()
    x = torch.randn(1, 3, 128, 128)  # 8x8 patches, regions of 2x2 patches
    y = x.clone()
    y[..., 96:, 96:] += 3.0  # change only region 15's window (patches 6..7 x 6..7)
    with torch.no_grad():
        a, b = enc1(x)["regions"].flatten(2), enc1(y)["regions"].flatten(2)  # [1, D, 16]
    torch.testing.assert_close(a[..., :15], b[..., :15])  # the other regions are untouched
    assert not torch.allclose(a[..., 15], b[..., 15])


# ------------------------------------------------------------------------------------------ frozen CLIP
def test_frozen_clip_bit_identical_and_absent_from_optimizer():
    clip = _clip()
    m = _method(clip)
    frozen = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    groups = m.param_groups(2e-5, head_lr_mult=10.0, weight_decay=0.01)
    opt = torch.optim.AdamW(groups)
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) not in in_opt for p in clip.model.parameters())
    assert id(m.student.encoder.region_tokens) not in in_opt  # [code] never trained
    assert id(m.student.encoder.prompt_embeddings) in in_opt and groups[0]["lr"] == pytest.approx(2e-4)
    prompts0 = m.student.encoder.prompt_embeddings.detach().clone()
    regions0 = m.student.encoder.region_tokens.detach().clone()
    m.train()
    assert not clip.visual.training  # the frozen tower never leaves eval mode
    label = torch.full((2, 64, 64), 255, dtype=torch.long)
    label[:, :32] = 3
    label[:, 40:, :20] = 7
    for _ in range(2):
        out = m.training_step({"image": torch.randn(2, 3, 64, 64), "label": label})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    for n, p in clip.model.named_parameters():
        assert torch.equal(p, frozen[n]), n
    assert not torch.equal(m.student.encoder.prompt_embeddings, prompts0)
    assert torch.equal(m.student.encoder.region_tokens, regions0)
    trained = _method(_clip(), train_region_tokens=True)
    assert any(p is trained.student.encoder.region_tokens for g in trained.param_groups(1e-4) for p in g["params"])


# ------------------------------------------------------------------------------------------ shapes, decoder
@pytest.mark.parametrize("n_classes", [20, 171])
def test_output_shapes_at_512(n_classes):
    names = VOC if n_classes == 20 else [f"class {i}" for i in range(n_classes)]
    unseen = VOC_UNSEEN if n_classes == 20 else [19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160]
    m = _method(_clip(patch=16, width=32, layers=1), names, unseen).eval()
    x = torch.randn(1, 3, 512, 512)
    captured = {}
    hook = m.student.decoder.register_forward_hook(lambda mod, inp, out: captured.update(out))
    with torch.no_grad():
        enc = m.student.encoder(x)
        scores = m.predict(x)
    hook.remove()
    D = 32
    assert enc["dense"].shape == (1, D, 32, 32) and enc["regions"].shape == (1, D, 4, 4) and enc["cls"].shape == (1, D)
    assert scores.shape == (1, n_classes, 512, 512) and scores.dtype == torch.float32
    assert captured["q0"].shape == (1, 16 * n_classes, 2 * D) and captured["q"].shape == (1, 16 * n_classes, D)
    assert captured["v"].shape == (1, 32 * 32, D)


def test_logits_are_the_mean_over_region_copies():
    torch.manual_seed(0)
    dec = RegionTextDecoder(16, num_layers=2, num_heads=4).eval()
    C = 5
    dense = F.normalize(torch.randn(2, 16, 6, 7), dim=1)
    cls, regions = F.normalize(torch.randn(2, 16), dim=-1), F.normalize(torch.randn(2, 16, 4, 4), dim=1)
    text = F.normalize(torch.randn(C, 16), dim=-1)
    with torch.no_grad():
        out = dec(dense, cls, regions, text)
    s = out["q"] @ out["v"].transpose(1, 2)  # [2, 16*C, 42]
    want = torch.stack([torch.stack([s[:, k * C + c] for k in range(16)]).mean(0) for c in range(C)], dim=1)
    torch.testing.assert_close(out["logits"], want.reshape(2, C, 6, 7))
    # query l*C + c is [(R_l + g) * T_c ; T_c]
    R = regions.flatten(2).transpose(1, 2)
    want_q = torch.cat([(R[:, 2] + cls) * text[3], text[3].expand(2, 16)], -1)
    torch.testing.assert_close(out["q0"][:, 2 * C + 3], want_q)
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3 * 4)
    torch.testing.assert_close(fuse_regions(x, 4), x.view(2, 3, 4).mean(1))


def test_zegclip_switches_build_its_head():
    z = _method(
        _clip(), region_grid=0, bidirectional=False, lateral_proj=False, logits="attention", recovery_weight=0.0
    ).eval()
    assert z.recovery is None and z.student.decoder.lateral_proj is None and z.student.encoder.region_tokens is None
    with torch.no_grad():
        assert z.predict(torch.randn(1, 3, 64, 64)).shape == (1, 20, 64, 64)
    out = _method(_clip(), region_grid=0, logits="attention", recovery_weight=0.0).training_step(
        {"image": torch.randn(1, 3, 64, 64), "label": torch.randint(0, 15, (1, 64, 64))}
    )
    out["loss"].backward()  # every trainable parameter in the graph (DDP-safe)


# ------------------------------------------------------------------------------------------ losses
def test_recovery_loss_zero_when_the_decoder_reproduces_its_inputs():
    m = _method()
    seen = {}
    hook = m.student.decoder.register_forward_hook(lambda mod, inp, out: seen.update(out))

    class Echo(torch.nn.Module):  # a "recovery decoder" that returns exactly the decoder inputs
        def forward(self, q, v):
            return seen["q0"], seen["v0"]

    batch = {"image": torch.randn(1, 3, 64, 64), "label": torch.randint(0, 15, (1, 64, 64))}
    assert float(m.training_step(batch)["loss_recovery"]) > 0.0
    m.recovery = Echo()
    assert float(m.training_step(batch)["loss_recovery"]) == 0.0
    hook.remove()
    q0, v0 = torch.randn(1, 8, 6), torch.randn(1, 5, 3)
    assert [float(t) for t in recovery_loss(q0, v0, q0, v0)] == [0.0, 0.0]


def test_ignore_pixels_are_negatives():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    target[0, 0] = 0
    focal, dice = focal_dice_ignore_as_negative(logits, target)
    focal.backward()
    g = logits.grad[0]
    assert bool((g[:, 1:] > 0).all())  # ignored pixels push every class down (negatives), as the public code
    assert bool((g[0, 0] < 0).all())
    # value: sum over the 2 classes of the pixel mean of FL, over 1 present (image, class) pair
    p = torch.tensor(0.5)
    fl_neg, fl_pos = 0.75 * p**2 * -torch.log(1 - p), 0.25 * p**2 * -torch.log(p)
    want = (4 * fl_pos + 12 * fl_neg) / 16 + fl_neg
    torch.testing.assert_close(focal.detach(), want)
    torch.testing.assert_close(dice.detach(), torch.tensor(1 - (2 * 0.5 * 4 + 1) / (0.5 * 16 + 4 + 1)))


def test_st_pseudo_labels_only_unlabelled_unseen_confident():
    logits = torch.full((1, 3, 2, 2), -5.0)
    logits[0, 2, :, 1] = 3.0  # class 2 (unseen) confident in column 1
    logits[0, 0, 1, 0] = 3.0  # class 0 (seen) top at (1, 0)
    label = torch.tensor([[[255, 255], [255, 1]]])
    out = st_pseudo_labels(logits, label, torch.tensor([2]), threshold=0.5)
    assert out.tolist() == [[[255, 2], [255, 1]]]


# ------------------------------------------------------------------------------------------ inference
def test_seen_bias_is_applied_in_probability_space():
    m = _method().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        scores = m.predict(x)
        logits = m.student(x, m.text_embeds)["logits"]
        biased = make_logits_fn(m, seen_bias=0.1)(x)
    torch.testing.assert_close(scores, F.interpolate(logits, size=(64, 64), mode="bilinear").sigmoid())
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    seen, unseen = m.seen, m.unseen
    torch.testing.assert_close(biased[:, seen], scores[:, seen] - 0.1)
    torch.testing.assert_close(biased[:, unseen], scores[:, unseen])


# ------------------------------------------------------------------------------------------ checkpoints (CLI)
_TINY_RC = [
    "experiment=demo_clip_rc",
    "dataset.crop_size=[64,64]",
    "dataset.scale=[256,64]",
    "dataset.test_scale=[256,64]",
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.eval_interval=0",
    "trainer.ckpt_interval=0",
    "trainer.num_workers=0",
    "trainer.log_interval=1",
    "trainer.amp=fp32",
    "trainer.overlay_count=0",
    "method.num_prompts=2",
]


def _compose(name, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def _clip_file(path, seed):
    cfg = tiny_clip_cfg(embed_dim=32, image_size=32, patch_size=8, width=32, layers=1, heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = FrozenCLIP(model_name="tiny-file", pretrained=None, model_cfg=cfg, hash_weights=False)
    torch.save(clip.model.state_dict(), path)
    return cfg


@pytest.mark.slow  # scripts' entry functions in-process: a 2-step training, one evaluation, one prediction
def test_checkpoint_evaluates_predicts_any_vocabulary_and_needs_the_clip_file(tmp_path, voc_root):
    wfile = tmp_path / "clip_a.pt"
    mcfg = _clip_file(wfile, seed=0)
    cfg = _compose("train", [*_TINY_RC, f"run_root={tmp_path / 'runs'}", f"dataset.root={voc_root}"])
    cfg.teacher = OmegaConf.create(
        {
            "_target_": "zss.teachers.clip.FrozenCLIP",
            "_convert_": "all",
            "model_name": "tiny-file",
            "pretrained": str(wfile),
            "model_cfg": mcfg,
            "dense_mode": "tokens",
        }
    )
    final = train(cfg)
    ckpt_path = next((tmp_path / "runs").glob("*/*/last.pt"))
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert not any(k.startswith("student.encoder.visual.") for k in ckpt["state"])  # no CLIP weights inside
    assert ckpt["teacher"]["required_at_test_time"] and ckpt["teacher"]["file"] == str(wfile.resolve())
    assert ckpt["config"]["trainer"]["seen_bias"] == 0.1

    ev = ["efficiency=false", f"dataset.root={voc_root}", f"ckpt={ckpt_path}"]
    again = evaluate_checkpoint(_compose("eval", [*ev, f"out_dir={tmp_path / 'ev'}"]))
    for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"):
        assert again[k] == final[k], k

    from zss.cli.predict import predict

    img = sorted((voc_root / "JPEGImages").glob("*.jpg"))[0]
    res = predict(
        _compose(
            "predict",
            [
                f"ckpt={ckpt_path}",
                f"image={img}",
                "classes='cat,grass,road sign'",
                f"out={tmp_path / 'pred'}",
                "short_side=64",
            ],
        )
    )
    assert len(res) == 1 and res[0]["label"].is_file()
    assert (tmp_path / "pred" / "classes.txt").read_text().split("\n")[:3] == ["cat", "grass", "road sign"]

    # without the CLIP weights file: one clear error naming the file and the fix
    moved = tmp_path / "elsewhere.pt"
    shutil.move(wfile, moved)
    with pytest.raises(TeacherWeightsNotFoundError, match="runs CLIP at test time") as e:
        evaluate_checkpoint(_compose("eval", ev))
    assert str(wfile) in str(e.value) and "teacher.pretrained=" in str(e.value)
    # the same weights from another path: accepted, same model
    m1, _ = load_for_inference(ckpt_path, teacher_overrides={"pretrained": str(moved)})
    assert m1.recovery is None  # training-only part dropped
    x = torch.randn(1, 3, 64, 64)
    shutil.copy(moved, wfile)
    m0, _ = load_for_inference(ckpt_path)
    with torch.no_grad():
        torch.testing.assert_close(m1.predict(x), m0.predict(x))
    other = tmp_path / "clip_b.pt"
    _clip_file(other, seed=1)
    with pytest.raises(ValueError, match="sha256"):  # other CLIP weights: refused, not silently used
        load_for_inference(ckpt_path, teacher_overrides={"pretrained": str(other)})


# ------------------------------------------------------------------------------------------ switches
def test_switches_input_norm_drop_path_head_init():
    clip = _clip(patch=16, width=32, layers=2)
    imnet = PromptedCLIPEncoder(clip, num_prompts=2, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    rgb = torch.rand(1, 3, 32, 32)  # [0, 1] pixels
    clip_norm = (rgb - torch.tensor(clip.clip_mean).view(1, 3, 1, 1)) / torch.tensor(clip.clip_std).view(1, 3, 1, 1)
    want = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(imnet.prepare(clip_norm), want)  # the public code's CLIP input
    assert _method(clip, clip_input_norm="clip").student.encoder.pixel_mean == clip.clip_mean

    dp = PromptedCLIPEncoder(clip, num_prompts=2, region_grid=4, prompt_dropout=0.0, drop_path_rate=0.9)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        dp.train()
        torch.manual_seed(0)
        a = dp(x)["dense"]
        dp.eval()
        b, c = dp(x)["dense"], dp(x)["dense"]
        nodp = PromptedCLIPEncoder(clip, num_prompts=2, region_grid=4, drop_path_rate=0.0)
        nodp.load_state_dict(dp.state_dict())
        d = nodp.eval()(x)["dense"]
    assert not torch.allclose(a, b)  # stochastic depth acts in training only
    torch.testing.assert_close(b, c)
    torch.testing.assert_close(b, d)

    tn = _method(clip, head_init="trunc_normal").student.decoder
    assert all(float(layer.linear2.weight.detach().abs().sum()) == 0.0 for layer in tn.layers_v)
    assert float(tn.q_proj.weight.detach().std()) < 0.03 and float(tn.q_proj.bias.detach().abs().sum()) == 0.0
    default = _method(clip).student.decoder  # PyTorch defaults: the public code never calls the head's init
    assert float(default.layers_v[0].linear2.weight.detach().abs().sum()) > 0.0


@pytest.mark.slow  # builds two ViT-B/16-sized models with random weights
def test_compare_efficiency_prints_side_by_side_ratios(tmp_path):
    from conftest import run_script

    out = run_script(
        [
            "scripts/compare_efficiency.py",
            "--no-measure",
            "--image-size",
            "64",
            "--threads",
            "1",
            "--models",
            "clip_rc",
            "zegclip",
            "--reference",
            "zegclip",
            "--json",
            str(tmp_path / "e.json"),
        ]
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| CLIP-RC") or ln.startswith("| ZegCLIP")]
    assert len(lines) == 2
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["zegclip"]["total_params"] < rep["clip_rc"]["total_params"]
    assert rep["clip_rc"]["total_params"] - rep["clip_rc"]["trainable_params"] > 85e6  # frozen ViT-B/16 tower
    ratio = rep["clip_rc"]["gflops"] / rep["zegclip"]["gflops"]
    assert f"| {ratio:.2f} |" in lines[0] and "| 1.00 |" in lines[1]
