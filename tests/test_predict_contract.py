"""One predict contract for every method: ``Method.predict`` gives logits ``Tensor[B, C, H, W]`` at the input size,
``seen_bias`` is subtracted from exactly that output, and a method from ``zss.from_checkpoint`` carries its
preprocessing, so ``predict_image(method, path)`` is one call. Also: checkpoints whose stored method config lacks a
key rebuild with the value they were trained with (``CHECKPOINT_DEFAULTS``), not today's default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zss
from zss.data.classes import get_benchmark
from zss.engine.evaluate import make_logits_fn
from zss.methods import ClipRC, ClipZSS
from zss.methods.base import MASKED_LOGIT
from zss.models.student import Student
from zss.predict import predict_image
from zss.teachers.clip import FrozenCLIP, build_tiny_clip, tiny_clip_cfg
from zss.teachers.oracle import OracleTeacher

D = 32
VOC20 = get_benchmark("voc20")
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # configs/dataset/voc20.yaml
METHODS = ["baseline", "clip_zss", "clip_zss_paper", "chimera_seg", "chimera_seg_paper", "clip_rc", "zegclip"]


@pytest.fixture(scope="module")
def tiny_clip():
    return build_tiny_clip(
        embed_dim=D, image_size=64, patch_size=16, width=32, layers=2, heads=2, seed=0, dense_mode="maskclip"
    )


def _text():
    torch.manual_seed(0)
    return F.normalize(torch.randn(len(VOC20.classes), D), dim=-1)


def _student(dim=D):
    torch.manual_seed(0)
    return Student("test_resnet", embed_dim=dim, decoder="mlp", decoder_channels=16, input_mean=MEAN, input_std=STD)


def _create(name, teacher):
    extra = {"num_prompts": 2} if name in ("clip_rc", "zegclip") else {}
    return zss.create_method(name, student=_student(), teacher=teacher, text_embeds=_text(), **extra).eval()


@pytest.mark.parametrize("name", METHODS)
def test_predict_is_logits_at_the_input_size_and_seen_bias_is_subtracted_from_it(name, tiny_clip):
    m = _create(name, tiny_clip)
    x = torch.randn(2, 3, 64, 96)  # not square, not a multiple of every stride
    with torch.no_grad():
        logits = m.predict(x)
        assert logits.shape == (2, len(VOC20.classes), 64, 96) and logits.dtype == torch.float32
        if isinstance(m, ClipRC):  # the logits are the per-class sigmoid scores of the decoder logits
            torch.testing.assert_close(logits, m.decoder_logits(x).sigmoid())
            assert float(logits.min()) >= 0.0 and float(logits.max()) <= 1.0
        else:  # the student's stride-4 logits, upsampled bilinearly (what evaluation resized them with before)
            small = m.student.logits(m.student(x), m.text_embeds)
            assert small.shape[-1] < 96
            torch.testing.assert_close(
                logits, F.interpolate(small, size=(64, 96), mode="bilinear", align_corners=False)
            )
        biased = make_logits_fn(m, seen_bias=0.25)(x)
        unseen_only = m.predict(x, label_space="unseen")
    torch.testing.assert_close(biased[:, m.seen], logits[:, m.seen] - 0.25)
    torch.testing.assert_close(biased[:, m.unseen], logits[:, m.unseen])
    assert bool((unseen_only[:, m.seen] == MASKED_LOGIT).all())
    torch.testing.assert_close(unseen_only[:, m.unseen], logits[:, m.unseen])


# ------------------------------------------------------------------------------------------ checkpoints
def _save(path, method, method_node, model_node, teacher_node):
    ckpt = {
        "state": method.checkpoint_state(),
        "classnames": list(method.classnames),
        "unseen": method.unseen.tolist(),
        "teacher": method.teacher_identity(),
        "config": {
            "method": method_node,
            "teacher": teacher_node,
            "trainer": {"seen_bias": 0.0},
            "dataset": {"benchmark": "voc20", "mean": MEAN, "std": STD, "test_scale": [256, 64]},
        },
    }
    if model_node:  # CLIP-RC's checkpoints have no student
        ckpt["config"]["model"] = model_node
    torch.save(ckpt, path)
    return path


def _clip_zss_ckpt(path, **method_node):
    teacher = OracleTeacher(list(VOC20.classes), embed_dim=16)
    m = ClipZSS.from_flat(
        _student(16),
        teacher,
        list(VOC20.classes),
        list(VOC20.unseen),
        list(VOC20.templates),
        bank_size=8,
        **{k: v for k, v in method_node.items() if k != "use_plm"},
        use_plm=method_node.get("use_plm", True),
    )
    model = {
        "_target_": "zss.models.student.Student",
        "backbone": "test_resnet",
        "decoder": "mlp",
        "decoder_channels": 16,
        "embed_dim": 16,
    }
    node = {"_target_": "zss.methods.clip_zss.ClipZSS", "name": "clip_zss", "bank_size": 8, **method_node}
    return m.eval(), _save(path, m, node, model, {"_target_": "zss.teachers.oracle.OracleTeacher", "embed_dim": 16})


def test_from_checkpoint_carries_its_preprocessing_so_predict_image_is_one_call(tmp_path, voc_root, monkeypatch):
    _, path = _clip_zss_ckpt(tmp_path / "last.pt")
    m = zss.from_checkpoint(path)
    assert m.preprocessing == {"mean": tuple(MEAN), "std": tuple(STD), "short_side": 64, "long_side": 256}
    image = voc_root / "JPEGImages" / "2007_000032.jpg"
    pred = predict_image(m, image, mode="whole")  # one call: mean/std and the test resize from the checkpoint
    explicit = predict_image(m, image, MEAN, STD, short_side=64, long_side=256, mode="whole")
    assert torch.equal(pred, explicit) and pred.dtype == torch.int64 and pred.dim() == 2
    seen = []
    real = zss.predict.preprocess
    monkeypatch.setattr(zss.predict, "preprocess", lambda img, *a: seen.append(a) or real(img, *a))
    predict_image(m, image, mode="whole")
    assert seen == [(m.preprocessing["mean"], m.preprocessing["std"], 64, 256)]  # the carried values, no default
    built = zss.create_method(
        "baseline", student=_student(16), teacher=OracleTeacher(list(VOC20.classes), embed_dim=16)
    )
    with pytest.raises(ValueError, match="pass mean= and std="):
        predict_image(built.eval(), image)


def test_clip_zss_checkpoint_without_the_newer_keys_rebuilds_as_trained(tmp_path):
    """A checkpoint written before these keys were in the config was trained with the old constructor defaults."""
    old, path = _clip_zss_ckpt(
        tmp_path / "old.pt",
        synth_query="prototype",
        pseudo_negatives="image",
        pl_seen_margin=0.0,
        nel_weight=1.0,
        glm_attn_scale=None,
    )
    ckpt = torch.load(path, weights_only=True)
    for key in ("synth_query", "pseudo_negatives", "pl_seen_margin", "nel_weight", "glm_attn_scale"):
        del ckpt["config"]["method"][key]
    torch.save(ckpt, path)
    m = zss.from_checkpoint(path)  # strict load: a "clip"-query synthesizer would not take these weights
    assert m.synthesizer.query == "prototype" and m.pseudo_negatives == "image" and m.nel_weight == 1.0
    assert m.pl_seen_margin == 0.0 and m.glm.attn_scale is None
    _, new_path = _clip_zss_ckpt(tmp_path / "new.pt", synth_query="clip")  # a stored value wins
    assert zss.from_checkpoint(new_path).synthesizer.query == "clip"


@pytest.mark.parametrize("stored", [None, "public", "clip"])
def test_clip_rc_checkpoint_without_cls_input_rebuilds_with_clip(tmp_path, stored):
    """Old CLIP-RC / ZegCLIP checkpoints have no ``cls_input``: they ran open_clip's CLS input (``clip``)."""
    cfg = tiny_clip_cfg(embed_dim=D, image_size=64, patch_size=16, width=32, layers=1, heads=2)
    wfile = tmp_path / "clip.pt"
    torch.manual_seed(0)
    torch.save(
        FrozenCLIP(model_name="tiny-file", pretrained=None, model_cfg=cfg, hash_weights=False).model.state_dict(), wfile
    )
    teacher = FrozenCLIP(
        model_name="tiny-file", pretrained=str(wfile), model_cfg=cfg, hash_weights=False, input_mean=MEAN, input_std=STD
    )
    trained_with = stored or "clip"
    torch.manual_seed(0)
    m = ClipRC.from_flat(
        None,
        teacher,
        list(VOC20.classes),
        list(VOC20.unseen),
        text_embeds=_text(),
        num_prompts=2,
        cls_input=trained_with,
    ).eval()
    node = {"_target_": "zss.methods.clip_rc.ClipRC", "name": "clip_rc", "num_prompts": 2}
    if stored is not None:
        node["cls_input"] = stored
    tnode = {
        "_target_": "zss.teachers.clip.FrozenCLIP",
        "model_name": "tiny-file",
        "pretrained": str(wfile),
        "model_cfg": cfg,
        "hash_weights": False,
    }
    path = _save(tmp_path / "last.pt", m, node, {}, tnode)
    back = zss.from_checkpoint(path)
    assert back.student.encoder.cls_input == trained_with
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back.predict(x), m.predict(x))
