"""Command line of the dataset checker: Hydra-style ``key=value`` overrides of ``configs/check.yaml``.

    zss-check dataset=voc20                                        # same preset names as training
    zss-check dataset=context59_zs3 dataset.root=data/VOCdevkit/VOC2010 split=val sample=500

``dataset=`` takes every ``configs/dataset/<name>.yaml`` preset (``voc20``, ``voc20_aug``, ``context59_zs3`` ...)
and, as before, a bare benchmark name with ``benchmark_split=`` (``dataset=context59 benchmark_split=zs3``);
``root=``, ``benchmark_split=`` and ``--sample N`` are kept as aliases of ``dataset.root=``, ``dataset.split=``
and ``sample=N``. The work is :func:`zss.data.check.check_dataset` (plain values).

Like ``zss.cli.predict`` this module imports Hydra only inside its functions (composition only: no run dir,
no logging setup, no torch).
"""

from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["check_main", "check_overrides", "USAGE"]

USAGE = """usage: zss-check dataset=<preset> [dataset.root=<dir>] [split=<name>[,<name>...]] [sample=N]
                 [dataset.split=zs3|cascade] [img_dir=..] [ann_dir=..] [split_file=..]
       (python scripts/check_data.py / python -m zss.cli.check take the same arguments)
presets: {presets} (configs/dataset), or a benchmark name: {benchmarks}
aliases: root= -> dataset.root=, benchmark_split= -> dataset.split=, --sample N / max_labels= -> sample=
exit code 0 = OK, 1 = problems found, 2 = bad command line"""

_ALIASES = {
    "root": "dataset.root",
    "benchmark_split": "dataset.split",
    "max_labels": "sample",
    "name": "dataset",
    "dataset.name": "dataset",
    "--sample": "sample",
    "--max-labels": "sample",
    "--max_labels": "sample",
}


def check_overrides(argv: Sequence[str], presets: Sequence[str]) -> list[str]:
    """Translate the checker's command line into Hydra overrides of ``configs/check.yaml``.

    Args:
        argv: ``key=value`` words (``--sample N`` / ``--sample=N`` also accepted).
        presets: the dataset preset names (``zss.resources.dataset_presets()``).

    Returns:
        overrides, e.g. ``["dataset=context59_zs3", "dataset.root=/d", "split='train,val'"]``.

    Raises:
        ValueError: a word that is not ``key=value``, a flag without value, an unknown dataset name or a
            benchmark split that names no preset (lists the valid names).
    """
    from zss.data.classes import BENCHMARKS

    words, i, pairs = list(argv), 0, []
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" not in w:
            if i + 1 >= len(words):
                raise ValueError(f"{w} needs a value, e.g. {w} 100")
            w, i = f"{w}={words[i + 1]}", i + 1
        key, sep, val = w.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {w!r} is not key=value")
        pairs.append((_ALIASES.get(key, key.lstrip("-").replace("-", "_") if key.startswith("--") else key), val))
        i += 1
    given = dict(pairs)
    name = given.get("dataset")
    if name is not None and name not in presets:
        if name not in BENCHMARKS:
            raise ValueError(
                f"unknown dataset {name!r}; valid: dataset={'|'.join(presets)} "
                f"(configs/dataset) or a benchmark name {'|'.join(BENCHMARKS)}"
            )
        bsplit = given.get("dataset.split") or BENCHMARKS[name][0]
        cand = name if bsplit is None else f"{name}_{bsplit}"
        if cand not in presets:
            valid = [s for s in BENCHMARKS[name] if s]
            raise ValueError(
                f"dataset={name} benchmark_split={bsplit}: no preset {cand!r}; valid benchmark splits of "
                f"{name}: {'|'.join(valid)} (or dataset={'|'.join(p for p in presets if p.startswith(name))})"
            )
        pairs = [("dataset", cand) if k == "dataset" else (k, v) for k, v in pairs]
    out = []
    for k, v in pairs:
        if k.lstrip("+~") == "split" and "," in v and v[:1] not in "[\"'":
            v = f"'{v}'"  # a comma list is one value here, not a Hydra sweep
        out.append(f"{k}={v}")
    return out


def compose_check(overrides: Sequence[str]) -> dict:
    """``configs/check.yaml`` composed with ``overrides`` and resolved, as a plain dict (``dataset`` inside).

    Raises:
        ValueError: Hydra cannot compose it (unknown key, missing ``dataset=``...), with Hydra's message.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from zss.resources import config_dir

    GlobalHydra.instance().clear()  # an earlier hydra.main in this process leaves it initialised
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="check", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(str(e).strip()) from e


def check_main(argv: Sequence[str] | None = None) -> int:
    """``zss-check``: compose the dataset preset, run :func:`zss.data.check.check_dataset`, print the report.

    Returns:
        0 when the dataset is OK, 1 when problems were found, 2 for a bad command line (message on stderr).
    """
    from zss.data.check import check_dataset, format_report
    from zss.data.classes import BENCHMARKS
    from zss.resources import dataset_presets

    argv = sys.argv[1:] if argv is None else list(argv)
    presets = dataset_presets()
    usage = USAGE.format(presets="|".join(presets), benchmarks="|".join(BENCHMARKS))
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return 0
    try:
        cfg = compose_check(check_overrides(argv, presets))
        extra = sorted(set(cfg) - {"dataset", "paths", "split", "sample", "img_dir", "ann_dir", "split_file"})
        if extra:
            raise ValueError(f"{extra[0]} is not a key of the checker (configs/check.yaml)")
        ds = cfg["dataset"]
        sample = cfg.get("sample")
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int)):
            raise ValueError(f"sample={sample!r}: must be an integer >= 1 (annotation files to read)")
        split = cfg.get("split")
        rep = check_dataset(
            ds["benchmark"],
            ds["root"],
            splits=split if split is None or isinstance(split, (str, list)) else str(split),
            benchmark_split=ds.get("split"),
            max_labels=sample,
            img_dir=cfg.get("img_dir"),
            ann_dir=cfg.get("ann_dir"),
            split_file=cfg.get("split_file"),
        )
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}\n{usage}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if ds.get("train_label_dir"):
        print(
            f"NOTE: dataset={ds['name']} trains on labels in {ds['train_label_dir']} (split {ds['train_split']}); "
            f"check them with split={ds['train_split']} ann_dir={ds['train_label_dir']}"
        )
    if ds.get("train_ann_dirs"):
        for part, d in zip(str(ds["train_split"]).split("+"), ds["train_ann_dirs"]):
            print(
                f"NOTE: dataset={ds['name']} trains on split part {part!r} with labels in {d or 'the layout default'}; "
                f"check it with split={part}" + (f" ann_dir={d}" if d else "")
            )
    return 0 if rep.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(check_main())
