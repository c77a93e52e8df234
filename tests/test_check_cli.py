"""The dataset checker's command line takes the dataset presets of training (configs/dataset/*.yaml) with
Hydra-style ``key=value`` overrides, and keeps the old aliases (root=, benchmark_split=, --sample N)."""

from __future__ import annotations

import pytest

from zss.cli.check import check_main  # python -m zss.cli.check = zss-check = scripts/check_data.py
from zss.resources import dataset_presets


@pytest.mark.parametrize("preset", dataset_presets())
def test_every_training_preset_is_accepted(preset, tmp_path, capsys):
    # a missing root is a data problem (1) reported for this preset, not a bad command line (2)
    assert check_main([f"dataset={preset}", f"dataset.root={tmp_path / 'nowhere'}"]) == 1
    out = capsys.readouterr().out
    assert "nowhere" in out and "FAILED" in out


def test_preset_keys_split_lists_and_aliases(voc_root, capsys):
    assert check_main(["dataset=voc20", f"dataset.root={voc_root}", "split=train,val", "sample=3"]) == 0
    out = capsys.readouterr().out
    assert "| train | 40 | 40 | 40 |" in out and "| val | 20 | 20 | 20 |" in out and "trainval" not in out
    assert "labels read: 3 (sample of 60)" in out
    assert check_main(["dataset=voc20", f"root={voc_root}", "split=[val]", "--sample", "2"]) == 0
    assert "labels read: 2 (sample of 20)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["dataset=voc22"], ["voc22", "context59_zs3"]),  # lists the presets
        (["dataset=context59", "benchmark_split=nope"], ["nope", "zs3"]),
        (["dataset=voc20", "trainer.lr=1"], ["trainer"]),  # not a checker key
        (["dataset=voc20", "+sampel=3"], ["sampel"]),
        (["dataset=voc20", "sample=abc"], ["sample='abc'"]),
        ([], ["dataset"]),  # dataset= is required
    ],
)
def test_bad_command_line_is_exit_code_2(args, words, tmp_path, capsys):
    assert check_main([*args, f"dataset.root={tmp_path}"] if args else []) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
