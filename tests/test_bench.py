"""Speed tooling: exact FLOPs of fused attention, the step / inference benchmark scripts on their
tiny smoke configs, and the trainer's ``compile`` / ``channels_last`` options (same results, tiny models)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from zss.engine.efficiency import count_flops, efficiency_report, flop_counter
from zss.engine.trainer import TrainConfig, Trainer, new_run_dir
from zss.methods.baseline import SeenOnlyBaseline
from zss.models.student import Student


# ------------------------------------------------------------------------------------- FLOPs
def _vit_hand_count(model, size: int) -> int:
    """FLOPs (2 x MACs) of a timm ViT forward by hand: patch conv, per block qkv + QK^T + AV + proj + MLP, head."""
    p = model.patch_embed.proj.kernel_size[0]
    e, n = model.embed_dim, (size // p) ** 2
    t = n + model.num_prefix_tokens
    hidden = model.blocks[0].mlp.fc1.out_features
    block = 2 * t * e * 3 * e + 2 * 2 * t * t * e + 2 * t * e * e + 2 * 2 * t * e * hidden
    head = 2 * e * model.head.out_features if isinstance(model.head, nn.Linear) else 0
    return 2 * n * e * 3 * p * p + len(model.blocks) * block + head


def test_flops_count_fused_attention_like_a_hand_count():
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False).eval()
    assert vit.blocks[0].attn.fused_attn  # F.scaled_dot_product_attention: a fused kernel torch's counter misses
    flops, _ = count_flops(vit, torch.randn(1, 3, 160, 160))
    assert flops == _vit_hand_count(vit, 160)
    # nn.MultiheadAttention / TransformerEncoderLayer fast paths (eval, no grad): one fused op each
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    flops, _ = count_flops(lambda q: mha(q, q, q, need_weights=False), x)
    assert flops == 2 * 2 * 10 * 32 * 32 * 4 + 2 * 2 * 2 * 10 * 10 * 32  # q, k, v, out projections + QK^T + AV
    enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    flops, _ = count_flops(enc, x)
    assert flops == 2 * 2 * 10 * 32 * 32 * 4 + 2 * 2 * 2 * 10 * 10 * 32 + 2 * 2 * 2 * 10 * 32 * 64
    rep = efficiency_report(vit, image_size=(160, 160), measure=False)
    assert rep["gflops"] == pytest.approx(_vit_hand_count(vit, 160) / 1e9)


def test_flop_counter_counts_the_attention_backward():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with flop_counter() as fc:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    mm = 2 * 2 * 16 * 16 * 8  # one [16 x 8] @ [8 x 16]-sized matmul over 2 heads
    # forward: QK^T, AV; backward: the flash kernels' recomputed QK^T, dV, dP, dQ, dK (torch's CUDA convention)
    assert fc.get_total_flops() == 2 * mm + 5 * mm


# ------------------------------------------------------------------------------------- scripts
def test_bench_step_tiny_prints_ratios_to_the_seen_only_step(tmp_path):
    from conftest import run_script

    out = run_script(
        ["scripts/bench_step.py", "--tiny", "--threads", "1", "--amp", "fp32", "--json", str(tmp_path / "s.json")]
    )
    rows = {ln.split("|")[1].strip(): ln for ln in out.stdout.splitlines() if ln.startswith("| ")}
    for title in ("seen-only", "CLIP-ZSS", "Chimera-Seg", "CLIP-RC", "ZegCLIP"):
        assert title in rows, out.stdout
    assert rows["seen-only"].split("|")[3].strip() == "1.00"
    rep = json.loads((tmp_path / "s.json").read_text())
    res = rep["results"]
    for name in ("clip_zss", "chimera_seg"):
        r = res[name]
        assert (
            f"| {r['step_s'] / res['seen_only']['step_s']:.2f} |"
            in rows["CLIP-ZSS" if name == "clip_zss" else "Chimera-Seg"]
        )
        assert r["host_syncs"] == 0, r["sync_sites"]  # counted on CPU: the CUDA code path reads nothing back
        assert r["gflop_per_step"] > res["seen_only"]["gflop_per_step"] > 0 and len(r["steps_s"]) == 2
    parts = rep["breakdowns"]["clip_zss"]
    for k in (
        "teacher forward",
        "pseudo labels (incl. K-Means)",
        "synthesizer",
        "student forward",
        "backward",
        "optimizer",
    ):
        assert parts[k] > 0, k
    assert "  of which CSH" in rep["breakdowns"]["chimera_seg"]
    assert "#### CLIP-ZSS step breakdown" in out.stdout


def test_bench_data_prints_both_counts_and_finds_the_same_samples():
    from conftest import run_script

    out = run_script(["scripts/bench_data.py", "--presets", "voc20", "--samples", "3", "--repeats", "1"])
    rows = [ln.split("|") for ln in out.stdout.splitlines() if ln.startswith("| voc20 ")]
    assert [r[3].strip() for r in rows] == ["torch.unique (reference)", "bincount (shipping)"], out.stdout
    assert rows[0][5].strip() == "1.00" and rows[1][6].strip() == "yes", out.stdout


def test_bench_infer_tiny_prints_ratios_to_the_dense_clip(tmp_path):
    from conftest import run_script

    out = run_script(
        [
            "scripts/bench_infer.py",
            "--tiny",
            "--threads",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--json",
            str(tmp_path / "i.json"),
        ]
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| ") and "model" not in ln]
    assert len(lines) == 5 and lines[0].startswith("| dense CLIP")
    rep = json.loads((tmp_path / "i.json").read_text())
    assert lines[0].rstrip(" |").endswith("1.00 | 1.00 | 1.00")
    zss = rep["clip_zss"]
    assert f"| {zss['gflops'] / rep['maskclip']['gflops']:.2f} |" in lines[1]
    assert rep["maskclip"]["trainable_params"] == 0 and zss["img_per_s"] > 0
    # 2 slide windows on a 64x85 image: the slide costs about two crops (+ the resize, not counted)
    assert rep["chimera_seg"]["slide_gflops"] == pytest.approx(2 * rep["chimera_seg"]["gflops"], rel=1e-6)


# ------------------------------------------------------------------------------------- trainer options
class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 32, 32, generator=g), "label": torch.randint(0, 3, (32, 32), generator=g)}


def _trainer(tmp_path, name, **kw):
    torch.manual_seed(0)
    student = Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16, decoder_kwargs={"dropout": 0.0})
    method = SeenOnlyBaseline(
        student,
        None,
        ["a", "b", "c", "d"],
        [3],
        text_embeds=F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1),
    )
    cfg = TrainConfig(
        max_steps=1,
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        amp="fp32",
        eval_interval=0,
        log_interval=0,
        ckpt_interval=0,
        num_workers=0,
        **kw,
    )
    return Trainer(method, _Data(), None, cfg, new_run_dir(tmp_path, name))


def _loss_and_grads(t: Trainer) -> tuple[torch.Tensor, dict]:
    """One step's loss and gradients in float64 (the trainer's student and image layout kept): float32 kernels of
    another memory layout or from inductor round differently (~1e-4 relative in the gradients of a tiny net)."""
    t.method.double()
    batch = t._to_device(torch.utils.data.default_collate([_Data()[0], _Data()[1]]))
    batch["image"] = batch["image"].double()  # keeps the layout _to_device gave it
    out = t.method.training_step(batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad for n, p in t.method.named_parameters() if p.grad is not None}


def _assert_same(a: Trainer, b: Trainer) -> None:
    la, ga = _loss_and_grads(a)
    lb, gb = _loss_and_grads(b)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-7)
    assert set(ga) == set(gb)
    flat_a = torch.cat([g.flatten() for g in ga.values()])
    flat_b = torch.cat([gb[n].flatten() for n in ga])
    assert (flat_a - flat_b).norm() <= 1e-5 * flat_b.norm()


def test_trainer_channels_last_gives_the_same_step(tmp_path):
    plain, nhwc = _trainer(tmp_path, "plain"), _trainer(tmp_path, "nhwc", channels_last=True)
    conv = next(m for m in nhwc.method.student.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in plain.method.student.modules() if isinstance(m, nn.Conv2d)).weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert nhwc._to_device({"image": torch.randn(2, 3, 8, 8)})["image"].is_contiguous(memory_format=torch.channels_last)
    nhwc.fit()  # the loop runs with it
    assert nhwc.step == 1 and list(nhwc.method.state_dict()) == list(plain.method.state_dict())
    _assert_same(_trainer(tmp_path, "plain2"), _trainer(tmp_path, "nhwc2", channels_last=True))


@pytest.mark.slow  # inductor compiles the student on a CPU (about a minute)
def test_trainer_compile_gives_the_same_step_and_checkpoint_keys(tmp_path):
    plain, comp = _trainer(tmp_path, "plain"), _trainer(tmp_path, "comp", compile=True)
    assert comp.method.student._compiled_call_impl is not None
    _assert_same(plain, comp)
    assert list(comp.method.state_dict()) == list(plain.method.state_dict())  # checkpoints keep their keys
