"""The bundled published tables (zss/published.yaml): every row names its source and setting, and
zss-eval / training print the matching row beside their own numbers with deltas and setting warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from zss.published import REQUIRED_KEYS, format_comparison, load_published, matching_rows, run_settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)


def test_every_row_names_its_source_and_setting():
    rows = load_published()
    assert len(rows) >= 20 and len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert all(k in r for k in REQUIRED_KEYS), r["id"]
        assert isinstance(r["source"], str) and len(r["source"]) > 10, r["id"]
        assert r["setting"] in {"inductive", "transductive", "fully_supervised", "pseudo_mask", "wsss_student"}
        assert r["kind"] in {"absolute", "gain"} and r["metrics"]
        assert all(0 < float(v) <= 100 for v in r["metrics"].values()), r["id"]
        if r["setting"] == "transductive":
            assert r["transductive_mask"] == "gt_unseen", r["id"]
    # the review's table: CLIP-RC and ZegCLIP x VOC / COCO-Stuff x three settings
    for m in ("clip_rc", "zegclip"):
        for b in ("voc20", "cocostuff171"):
            assert {r["setting"] for r in rows if r["method"] == m and r["benchmark"] == b} == {
                "inductive",
                "transductive",
                "fully_supervised",
            }


def test_a_broken_table_is_refused(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("rows:\n  - {id: x, method: m, benchmark: b, setting: inductive}\n")
    with pytest.raises(ValueError, match="row 0 \\(x\\) lacks"):
        load_published(bad)


def test_clip_rc_row_matches_its_published_row_without_warnings():
    s = run_settings(_compose("train", ["experiment=voc20_clip_rc"]))
    assert (s["method"], s["benchmark"], s["setting"], s["train_images"], s["precision"]) == (
        "clip_rc",
        "voc20",
        "inductive",
        10582,
        "fp32",
    )
    results = {"pAcc": 95.0, "mIoU_seen": 92.0, "mIoU_unseen": 80.4, "hIoU": 85.9}
    text = format_comparison(results, s, "val")
    assert "| clip_rc-voc20-inductive | mIoU(U) | 84.40 | 80.40 | -4.00 |" in text
    assert "uyzhang/CLIP-RC" in text and "WARNING" not in text


@pytest.mark.parametrize("method", ["clip_rc", "zegclip"])
@pytest.mark.parametrize("benchmark", ["voc20", "cocostuff171"])
def test_every_published_clip_rc_zegclip_row_has_an_experiment_that_matches_it(method, benchmark):
    """experiment=<benchmark>_<method> (docs/reproduce.md's command) is the published inductive row's setting: the
    comparison names the row and warns about nothing; ``experiment=<benchmark> method=<method>`` (the method at the
    zss recipe: bf16) is warned about."""
    s = run_settings(_compose("train", [f"experiment={benchmark}_{method}"]))
    assert (s["method"], s["benchmark"], s["setting"]) == (method, benchmark, "inductive")
    text = format_comparison({"hIoU": 40.0}, s, "val")
    assert f"{method}-{benchmark}-inductive" in text and "WARNING" not in text
    zss_recipe = format_comparison(
        {"hIoU": 40.0}, run_settings(_compose("train", [f"experiment={benchmark}", f"method={method}"])), "val"
    )
    assert "precision: published fp32, this run bf16" in zss_recipe


def test_differing_settings_are_warned():
    cfg = _compose(
        "train",
        [
            "experiment=voc20_clip_rc",
            "dataset=voc20",
            "trainer.amp=bf16",
            "trainer.max_steps=20000",
            "method.transductive.enabled=true",
        ],
    )
    s = run_settings(cfg)
    text = format_comparison({"hIoU": 90.0}, s)
    for what in (
        "training set: published voc20_aug (10582 images), this run voc20 (1464)",
        "steps: published 40000",
        "transductive unseen-pixel rule",
        "precision: published fp32, this run bf16",
    ):
        assert what in text, what
    zss = run_settings(_compose("train", ["experiment=voc20", "method=clip_zss"]))
    assert [r["id"] for r in matching_rows(zss)] == ["clip_zss-voc20-gain"]
    assert "WARNING" not in format_comparison({}, zss) and "a gain over" in format_comparison({}, zss)
    none = run_settings(_compose("train", ["experiment=voc20", "method=baseline"]))
    assert "no bundled published row" in format_comparison({}, none)


def test_wsss_student_maps_to_the_clip_es_rows():
    s = run_settings(_compose("train", ["experiment=voc21_wsss"]))
    assert (s["method"], s["setting"], s["train_images"]) == ("clip_es", "wsss_student", 10582)
    assert {r["id"] for r in matching_rows(s, "val")} == {
        "clip_es-voc21-student_val_imagenet",
        "clip_es-voc21-student_val_coco",
    }


def test_eval_command_prints_the_published_rows(voc_root, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from conftest import TINY
    from zss.cli.eval import evaluate_checkpoint
    from zss.cli.train import train

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                *TINY,
                "trainer.max_steps=1",
                "trainer.batch_size=2",
                f"run_root={tmp_path}",
                f"dataset.root={voc_root}",
            ],
        )
    train(cfg)
    ckpt = next(tmp_path.glob("*/*/last.pt"))
    capsys.readouterr()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        ecfg = compose(config_name="eval", overrides=[f"ckpt={ckpt}", "efficiency=false", f"out_dir={tmp_path / 'ev'}"])
    out = evaluate_checkpoint(ecfg)
    printed = capsys.readouterr().out
    assert out["preset"] == "clip_zss" and "Published (preset clip_zss, clip_zss / voc20 / inductive)" in printed
    assert "clip_zss-voc20-gain" in printed
    md = next((tmp_path / "ev").glob("eval_*_results.md")).read_text()
    assert md.startswith("preset: method=clip_zss") and "clip_zss-voc20-gain" in md
