"""Bad input -> ONE clear message (naming the file / key / value and the fix), exit code != 0, no traceback.

One table: each case runs the real command function in-process (zss.cli.train.train_main / eval_main, the dataset
checker) with the user's argv, on the bundled VOC sample or a 5-image copy of it. ZSS_DEBUG=1 brings the
traceback back (last test). 16-bit PNG input (not an error: scaled to 8 bits) is tested at the end.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_main, train_in_process

FAST = [a for a in TINY if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=1"]


def _mini_voc(dst: Path, voc_root: Path, bad: str | None = None) -> tuple[Path, Path]:
    """4 train + 1 val images of the bundled sample in the VOC layout; ``bad`` spoils the first train image."""
    sets = voc_root / "ImageSets" / "Segmentation"
    train, val = sets.joinpath("train.txt").read_text().split()[:4], sets.joinpath("val.txt").read_text().split()[:1]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dst / sub).mkdir(parents=True)
    for i in train + val:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
        shutil.copy(voc_root / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass")
    (dst / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (dst / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    img = dst / "JPEGImages" / f"{train[0]}.jpg"
    data = img.read_bytes()
    if bad == "truncated":
        img.write_bytes(data[: len(data) // 2])
    elif bad == "empty":
        img.write_bytes(b"")
    elif bad == "not_image":
        img.write_text("<html>404 Not Found</html>\n")
    return dst, img


def _cli(main, args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run a command function as ``<cmd> args...``; (exit code, stdout, stderr)."""
    return run_main(main, args, monkeypatch, capsys)


@pytest.fixture(autouse=True)
def _keep_logging():
    """hydra.main points the root logger at the (captured) stdout of the moment: put the handlers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, voc_root) -> Path:
    """last.pt of a 1-step TINY run (test_resnet student, 16 decoder channels), trained in-process."""
    root = tmp_path_factory.mktemp("runs")
    train_in_process([*FAST, f"run_root={root}", f"dataset.root={voc_root}"])
    (found,) = root.glob("*/*/last.pt")
    return found


def _train(*extra):
    from zss.cli.train import train_main

    return train_main, [*FAST, *extra]


def _image_case(bad: str, checker: bool):
    def case(ctx):
        root, img = _mini_voc(ctx["tmp"] / "voc", ctx["voc_root"], bad)
        if checker:
            from zss.cli.check import check_main

            return (lambda: check_main(None)), ["dataset=voc20", f"dataset.root={root}"], [str(img)]
        main, args = _train(f"dataset.root={root}", f"run_root={ctx['tmp'] / 'runs'}")
        return main, args, [str(img), "re-download", "zss-check"]

    return case


def _root_is_file(ctx):
    f = ctx["tmp"] / "runs.txt"
    f.write_text("not a folder")
    return (*_train(f"run_root={f}"), [f"run_root={f}", "is a file"])


def _root_below_file(ctx):
    f = ctx["tmp"] / "runs.txt"
    f.write_text("not a folder")
    return (*_train(f"run_root={f / 'sub'}"), [f"run_root={f / 'sub'}", f"{f} is a file, not a folder"])


def _root_unwritable(ctx):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    d = ctx["tmp"] / "ro"
    d.mkdir()
    d.chmod(0o500)
    return (*_train(f"run_root={d / 'runs'}"), [f"run_root={d / 'runs'}", "cannot write"])


def _garbage(ctx, content=b"\x80\x04garbage, not a checkpoint"):
    f = ctx["tmp"] / "last.pt"
    f.write_bytes(content)
    return f


def _eval_garbage(ctx):
    from zss.cli.eval import eval_main

    f = _garbage(ctx)
    return eval_main, [f"ckpt={f}"], [str(f), "not a zss checkpoint"]


def _eval_pickled_model(ctx):
    from zss.cli.eval import eval_main

    f = ctx["tmp"] / "model.pt"
    torch.save(torch.nn.Linear(2, 2), f)  # a whole pickled module: torch would advise weights_only=False
    return eval_main, [f"ckpt={f}"], [str(f), "not a zss checkpoint"]


def _resume_garbage(ctx):
    f = _garbage(ctx, b"")
    return (
        *_train(f"resume={f}", f"dataset.root={ctx['voc_root']}", f"run_root={ctx['tmp']}"),
        [str(f), "not a zss checkpoint", "empty"],
    )


def _resume_other_arch(allow_changes: bool):
    def case(ctx):
        ck = ctx["ckpt"]()
        extra = ["resume_allow_changes=true"] if allow_changes else []
        expect = [f"resume={ck}", "config.json"] + (["another architecture", "[16"] if allow_changes else [])
        return (*_train(f"resume={ck}", "model.decoder_channels=8", f"dataset.root={ctx['voc_root']}", *extra), expect)

    return case


def _device_cuda(ctx):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    return (*_train("device=cuda", f"run_root={ctx['tmp']}"), ["device=cuda", "device=cpu"])


def _spoiled(ctx, edit, name="spoiled.pt") -> Path:
    """A copy of the module's 1-step checkpoint changed by ``edit(ckpt)``, still weights_only-loadable."""
    ck = torch.load(ctx["ckpt"](), weights_only=True)
    edit(ck)
    f = ctx["tmp"] / name
    torch.save(ck, f)
    return f


def _nan_weight(ck):
    ck["state"]["student.proj.weight"][0, 0] = float("nan")


SPOIL = {  # how a checkpoint was spoiled -> what the one line says
    "NaN weights": (_nan_weight, ["student.proj.weight", "non-finite"]),
    "19 class names, 20 text embeds": (lambda ck: ck["classnames"].pop(), ["19 class names", "text_embeds"]),
    "21 class names, 20 text embeds": (lambda ck: ck["classnames"].append("extra"), ["21 class names"]),
    "unseen id out of range": (lambda ck: ck.update(unseen=[15, 25]), ["'unseen'=[15, 25]", "[0, 20)"]),
    "${oc.env:...} in its config": (
        lambda ck: ck["config"]["dataset"].update(root="${oc.env:HOME}"),
        ["config.dataset.root='${oc.env:HOME}'", "interpolation"],
    ),
    "trainer.seen_bias=nan in its config": (
        lambda ck: ck["config"]["trainer"].update(seen_bias=float("nan")),
        ["config.trainer.seen_bias=nan", "finite"],
    ),
    "no method group": (lambda ck: ck["config"].pop("method"), ["no method group"]),
}


def _spoiled_ckpt(what: str, cmd: str):
    def case(ctx):
        edit, expect = SPOIL[what]
        f = _spoiled(ctx, edit)
        expect = [f"checkpoint {f}", "cannot be used", *expect]
        if cmd == "eval":
            from zss.cli.eval import eval_main

            return eval_main, [f"ckpt={f}", f"out_dir={ctx['tmp'] / 'ev'}", "efficiency=false"], expect
        if cmd == "predict":
            from zss.cli.predict import predict_main

            img = next(Path(ctx["voc_root"], "JPEGImages").glob("*.jpg"))
            return predict_main, [f"ckpt={f}", f"image={img}", f"out={ctx['tmp'] / 'pred'}"], expect
        return (
            *_train(
                f"resume={f}", "resume_allow_changes=true", f"dataset.root={ctx['voc_root']}", f"run_root={ctx['tmp']}"
            ),
            expect,
        )

    return case


def _stripped(ctx) -> Path:
    """A weights-only export of the module's checkpoint (no optimizer / scaler / step / best) in its own folder."""
    (ctx["tmp"] / "w").mkdir(exist_ok=True)
    keep = ("state", "config", "classnames", "unseen", "teacher")
    return _spoiled(ctx, lambda ck: [ck.pop(k) for k in list(ck) if k not in keep], "w/weights.pt")


def _predict(ctx, *args):
    from zss.cli.predict import predict_main

    img = next(Path(ctx["voc_root"], "JPEGImages").glob("*.jpg"))
    return predict_main, [f"image={img}", f"out={ctx['tmp'] / 'pred'}", *args]


def _predict_out_is_input(ctx):
    d = ctx["tmp"] / "photos"
    d.mkdir()
    shutil.copy(next(Path(ctx["voc_root"], "JPEGImages").glob("*.jpg")), d)
    from zss.cli.predict import predict_main

    return predict_main, [f"ckpt={ctx['tmp'] / 'missing.pt'}", f"image={d}", f"out={d}"], [f"out={d}", "read as input"]


def _voc_variant(ctx, kind: str) -> tuple[Path, Path]:
    """The 5-image VOC copy with its train split spoiled: ``utf16`` (saved as UTF-16), ``dup`` (an id listed
    twice) or ``unseen_only`` (every train label rewritten to background + an unseen class)."""
    root, _ = _mini_voc(ctx["tmp"] / "voc", ctx["voc_root"])
    sf = root / "ImageSets/Segmentation/train.txt"
    ids = sf.read_text().split()
    if kind == "utf16":
        sf.write_text("\n".join(ids) + "\n", encoding="utf-16")
    elif kind == "dup":
        sf.write_text("\n".join(ids + ids[:1]) + "\n")
    elif kind == "unseen_only":
        for i in ids:
            p = root / "SegmentationClass" / f"{i}.png"
            with Image.open(p) as im:
                lab = np.asarray(im).copy()
                pal = im.getpalette()
            lab[(lab != 0) & (lab != 255)] = 16  # raw 16 = pottedplant, unseen in voc20
            out = Image.fromarray(lab, mode="P")
            out.putpalette(pal)
            out.save(p)
    return root, sf


def _split_case(kind: str, cmd: str, expect: list[str]):
    def case(ctx):
        root, sf = _voc_variant(ctx, kind)
        if cmd == "check":
            from zss.cli.check import check_main

            return (lambda: check_main(None)), ["dataset=voc20", f"dataset.root={root}"], [sf.name, *expect]
        return (*_train(f"dataset.root={root}", f"run_root={ctx['tmp'] / 'runs'}"), expect)

    return case


def _classes_utf16(ctx):
    f = ctx["tmp"] / "classes.txt"
    f.write_text("cat\ndog\n", encoding="utf-16")
    return (
        *_predict(ctx, f"ckpt={ctx['tmp'] / 'missing.pt'}", f"classes_file={f}"),
        [f"classes_file '{f}'", "UTF-16", "UTF-8"],
    )


def _huge_strip(ctx):
    f = ctx["tmp"] / "strip.png"
    Image.new("RGB", (20000, 50)).save(f)
    return (
        *_predict(ctx, f"ckpt={ctx['ckpt']()}", "short_side=512", f"image={f}"),
        [str(f), "20000x50", "max_pixels=50000000", "long_side=2048"],
    )


def _bomb(ctx):
    ctx["mp"].setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 100x100 image stands for a 14000x14000 one
    f = ctx["tmp"] / "big.png"
    Image.new("RGB", (100, 100)).save(f)
    return (*_predict(ctx, f"ckpt={ctx['ckpt']()}", f"image={f}"), [str(f), "decompression-bomb", "downscale"])


def _aggregate(ctx, *args):
    from zss.cli.aggregate import aggregate_main

    run = ctx["tmp"] / "run1"
    run.mkdir()
    (run / "final_results.json").write_text('{"mIoU_seen": 10.0, "mIoU_unseen": 5.0, "hIoU": 6.7}')
    return aggregate_main, [str(run), *args]


def _cmd(name):
    import importlib

    module = {"prepare_cocostuff_main": "prepare", "prepare_context_main": "prepare"}.get(name, name[: -len("_main")])
    return getattr(importlib.import_module(f"zss.cli.{module}"), name)


CASES = {
    # key=value mistakes: all refused before anything is built
    "max_steps=0": lambda ctx: (
        *_train("trainer.max_steps=0", f"run_root={ctx['tmp']}"),
        ["trainer.max_steps=0", ">= 1"],
    ),
    "max_steps<0": lambda ctx: (*_train("trainer.max_steps=-5", f"run_root={ctx['tmp']}"), ["trainer.max_steps=-5"]),
    "batch_size=0": lambda ctx: (
        *_train("trainer.batch_size=0", f"run_root={ctx['tmp']}"),
        ["trainer.batch_size=0", ">= 1"],
    ),
    "seen_bias=nan": lambda ctx: (
        *_train("trainer.seen_bias=nan", f"run_root={ctx['tmp']}"),
        ["trainer.seen_bias=nan", "finite"],
    ),
    "lr<0": lambda ctx: (*_train("trainer.lr=-0.001", f"run_root={ctx['tmp']}"), ["trainer.lr=-0.001", ">= 0"]),
    "max_steps=text": lambda ctx: (
        *_train("trainer.max_steps=abc", f"run_root={ctx['tmp']}"),
        ["trainer.max_steps='abc'", "integer"],
    ),
    "+trainer.typo": lambda ctx: (
        *_train("+trainer.max_stpes=3", f"run_root={ctx['tmp']}"),
        ["trainer.max_stpes", "max_steps"],
    ),
    "name=nan": lambda ctx: (*_train("name=nan", f"run_root={ctx['tmp']}"), ["name=nan", "quote"]),
    "run_root=file": _root_is_file,
    "run_root=unwritable": _root_unwritable,
    "run_root below a file": _root_below_file,
    "batch of one at 32 px crops": lambda ctx: (
        *_train(
            "trainer.batch_size=1",
            "dataset.crop_size=[32,32]",
            f"run_root={ctx['tmp']}",
            f"dataset.root={ctx['voc_root']}",
        ),
        ["BatchNorm", "trainer.batch_size", "dataset.crop_size"],
    ),
    "device=cuda": _device_cuda,
    "device=gpu": lambda ctx: (*_train("device=gpu", f"run_root={ctx['tmp']}"), ["device='gpu'", "device=cpu"]),
    # checkpoints
    "eval ckpt=garbage": _eval_garbage,
    "eval ckpt=pickled model": _eval_pickled_model,
    "resume=empty file": _resume_garbage,
    "resume=other architecture": _resume_other_arch(False),
    "resume=other architecture, changes allowed": _resume_other_arch(True),
    **{f"{cmd} ckpt with {what}": _spoiled_ckpt(what, cmd) for what in SPOIL for cmd in ("eval", "predict")},
    "resume=ckpt with NaN weights": _spoiled_ckpt("NaN weights", "train"),
    "resume=ckpt without optimizer state": lambda ctx: (
        *_train(f"resume={_stripped(ctx)}", f"dataset.root={ctx['voc_root']}", f"run_root={ctx['tmp']}"),
        ["optimizer, scaler, step, best missing", f"init_from={ctx['tmp'] / 'w' / 'weights.pt'}"],
    ),
    # inference settings: refused before the model is built (the checkpoint here does not even exist)
    "eval eval.seen_bias=nan": lambda ctx: (
        __import__("zss.cli.eval", fromlist=["x"]).eval_main,
        [f"ckpt={ctx['ckpt']()}", "eval.seen_bias=nan", "efficiency=false", f"out_dir={ctx['tmp']}"],
        ["eval.seen_bias=nan", "finite"],
    ),
    "predict seen_bias=nan": lambda ctx: (
        *_predict(ctx, f"ckpt={ctx['tmp'] / 'missing.pt'}", "seen_bias=nan"),
        ["seen_bias=nan", "finite"],
    ),
    "predict crop_batch=0": lambda ctx: (
        *_predict(ctx, f"ckpt={ctx['tmp'] / 'missing.pt'}", "crop_batch=0"),
        ["crop_batch=0", ">= 1"],
    ),
    "predict out=its image folder": _predict_out_is_input,
    "predict out= below a file": lambda ctx: (
        *_predict(ctx, f"ckpt={ctx['tmp'] / 'missing.pt'}", f"out={_garbage(ctx)}/sub"),
        ["out=", "cannot write there"],
    ),
    # images too large for predict: a clear refusal naming the limit and the key
    "predict 20000x50 image at short_side=512": _huge_strip,
    "predict decompression bomb": _bomb,
    # Hydra cannot lex the value: say how to quote it
    "predict image=phöto.jpg unquoted": lambda ctx: (
        *_predict(ctx, "ckpt=x.pt", "image=/photos/phöto.jpg"),
        ["image=/photos/phöto.jpg", "quote the value", "image=\"'/photos/phöto.jpg'\""],
    ),
    "train name=it's unquoted": lambda ctx: (
        *_train("name=it's", f"run_root={ctx['tmp']}"),
        ["name=it's", "quote the value", 'name=\\"it\'s\\"'],
    ),
    # text files that are not UTF-8
    "train split file in UTF-16": _split_case("utf16", "train", ["train.txt", "UTF-16", "UTF-8"]),
    "check split file in UTF-16": _split_case("utf16", "check", ["UTF-16"]),
    "predict classes_file in UTF-16": _classes_utf16,
    # split files and labels that train nothing or count twice
    "train split with a duplicate id": _split_case("dup", "train", ["train.txt", "twice"]),
    "check split with a duplicate id": _split_case("dup", "check", ["more than once"]),
    "train split whose labels hold no seen class": _split_case(
        "unseen_only", "train", ["dataset.train_split=train", "holds a seen", "zss-check"]
    ),
    "check split whose labels hold no seen class": _split_case("unseen_only", "check", ["holds a seen-class pixel"]),
    # the argparse commands: one line too
    "aggregate missing run dir": lambda ctx: (
        _cmd("aggregate_main"),
        [str(ctx["tmp"] / "nope")],
        [str(ctx["tmp"] / "nope"), "does not exist"],
    ),
    "aggregate --metrics foo": lambda ctx: (*_aggregate(ctx, "--metrics", "foo"), ["--metrics foo", "spelling"]),
    "prepare-cocostuff missing raw folder": lambda ctx: (
        _cmd("prepare_cocostuff_main"),
        ["--raw", str(ctx["tmp"] / "raw"), "--out", str(ctx["tmp"])],
        [str(ctx["tmp"] / "raw")],
    ),
    "plot missing run dir": lambda ctx: (_cmd("plot_main"), [str(ctx["tmp"] / "nope")], ["metrics.jsonl"]),
    "teach-clip missing data": lambda ctx: (
        _cmd("teach_clip_main"),
        ["--root", str(ctx["tmp"] / "tc"), "--data-root", str(ctx["tmp"] / "nodata")],
        [str(ctx["tmp"] / "nodata"), "Set --data-root"],
    ),
    # image files: training names the file, and the checker reports it (it said OK before)
    **{
        f"{bad} jpeg: {cmd}": _image_case(bad, cmd == "check")
        for bad in ("truncated", "empty", "not_image")
        for cmd in ("train", "check")
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_message(case, tmp_path, voc_root, request, monkeypatch, capsys):
    for k in ("ZSS_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(k, raising=False)
    ctx = {"tmp": tmp_path, "voc_root": voc_root, "ckpt": lambda: request.getfixturevalue("ckpt"), "mp": monkeypatch}
    main, args, expect = CASES[case](ctx)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = _cli(main, args, monkeypatch, capsys)
    text = out + err + "\n".join(str(w.message) for w in caught)
    assert code not in (0, None), f"exit code {code}:\n{text[-2000:]}"
    for piece in expect:
        assert piece in text, f"{piece!r} not in:\n{text[-2000:]}"
    assert "Traceback" not in text and "weights_only" not in text, text[-3000:]
    if "check" not in case:  # the checker prints its report; the others print one message on stderr
        bars = re.sub(r"train:\s*\d+%\|.*?\]", "", err)  # tqdm's progress bar shares stderr
        lines = [ln for ln in bars.replace("\r", "\n").splitlines() if ln.strip()]
        assert lines[0].startswith("zss: error: ") and len(lines) <= 2, err


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from zss.cli.train import train_main

    monkeypatch.setenv("ZSS_DEBUG", "1")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # recorded, so the "1" the command sets is undone afterwards
    monkeypatch.setattr(sys, "argv", ["zss", *FAST, "trainer.batch_size=0", f"run_root={tmp_path}"])
    with pytest.raises(ValueError, match="trainer.batch_size=0"):
        train_main()


# ------------------------------------------------------------------------------------ 16-bit PNG input
def _png16(path: Path) -> np.ndarray:
    """Write a 16-bit greyscale PNG (a ramp over 0..65535); return the 8-bit RGB it should read as."""
    ramp = np.linspace(0, 65535, 12 * 16).round().astype(np.uint16).reshape(12, 16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored with 16 bits
    grey = np.rint(ramp / 257.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_16bit_png_is_scaled_for_predict(tmp_path):
    from zss.predict import load_image

    want = _png16(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png").permute(1, 2, 0).numpy()  # predict's reader, [H, W, 3] uint8
    assert np.abs(got.astype(int) - want).max() <= 1
    assert (got == 255).mean() < 0.1  # not saturated to white


def test_16bit_png_is_scaled_in_datasets(tmp_path):
    from zss.data.dataset import SegDataset

    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    want = _png16(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "ann" / "a.png")
    ds = SegDataset(tmp_path, "img", "ann", None, img_suffix=".png", num_classes=2)
    got = ds[0]["image"].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - want).max() <= 1


def test_from_checkpoint_refuses_a_spoiled_checkpoint(ckpt, tmp_path):
    import zss

    f = _spoiled({"ckpt": lambda: ckpt, "tmp": tmp_path}, _nan_weight)
    with pytest.raises(ValueError, match=r"cannot be used: non-finite weights: student\.proj\.weight"):
        zss.from_checkpoint(f)


def test_predict_never_reads_its_own_outputs(tmp_path, voc_root):
    from zss.predict import list_images, write_classes

    src = next(Path(voc_root, "JPEGImages").glob("*.jpg"))
    shutil.copy(src, tmp_path / "photo.jpg")
    assert list_images(tmp_path) == [tmp_path / "photo.jpg"]
    for name in ("photo_overlay.png", "photo_label.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    write_classes(tmp_path, ["cat", "dog"])  # an out= folder of an earlier run that also held the inputs
    assert list_images(tmp_path) == [tmp_path / "photo.jpg"]


def test_resume_writes_nothing_before_the_checkpoint_is_accepted(ckpt, tmp_path, voc_root, monkeypatch, capsys):
    """A refused resume (no training state; another architecture) leaves the checkpoint's folder as it was."""
    from zss.cli.train import train_main

    ctx = {"ckpt": lambda: ckpt, "tmp": tmp_path}
    for bad, extra in ((_stripped(ctx), []), (ckpt, ["model.decoder_channels=8", "resume_allow_changes=true"])):
        before = sorted(p.name for p in bad.parent.iterdir())
        code, out, err = _cli(
            train_main, [*FAST, f"resume={bad}", f"dataset.root={voc_root}", *extra], monkeypatch, capsys
        )
        assert code == 1 and "zss: error: resume=" in err, err
        assert sorted(p.name for p in bad.parent.iterdir()) == before


def test_init_from_starts_a_new_run_from_a_weights_only_checkpoint(ckpt, tmp_path, voc_root, monkeypatch, capsys):
    from zss.cli.train import train_main

    weights = _stripped({"ckpt": lambda: ckpt, "tmp": tmp_path})
    code, out, err = _cli(
        train_main,
        [*FAST, f"init_from={weights}", f"dataset.root={voc_root}", f"run_root={tmp_path / 'runs'}", "trainer.lr=0"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err[-2000:]
    (new,) = (tmp_path / "runs").glob("*/*/last.pt")
    a, b = torch.load(new, weights_only=True), torch.load(ckpt, weights_only=True)
    assert a["step"] == 1 and a["config"]["init_from"] == str(weights)
    assert torch.equal(a["state"]["student.proj.weight"], b["state"]["student.proj.weight"])  # lr=0: kept


def test_resume_auto_skips_an_unreadable_last_pt_and_names_it(tmp_path, voc_root, monkeypatch, capsys):
    from zss.cli.train import train_main

    args = [*FAST, f"run_root={tmp_path}", f"dataset.root={voc_root}", "name=r", "resume=auto"]
    assert _cli(train_main, args, monkeypatch, capsys)[0] == 0
    (good,) = tmp_path.glob("r/*/last.pt")
    for i, content in enumerate((b"", b"PK\x03\x04 cut")):  # empty; truncated: newer than the good one
        bad = tmp_path / "r" / f"zz-{i}" / "last.pt"
        bad.parent.mkdir()
        bad.write_bytes(content)
        os.utime(bad, (good.stat().st_mtime + 10 + i,) * 2)
    code, out, err = _cli(train_main, args, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    for i in range(2):
        assert f"resume=auto skips {tmp_path / 'r' / f'zz-{i}' / 'last.pt'}: unreadable" in out + err
    assert "Traceback" not in out + err and f"run dir {good.parent}" in out


def test_predict_out_of_memory_names_the_keys(ckpt, tmp_path, voc_root, monkeypatch):
    import zss.predict as zp
    from zss.cli.common import load_for_inference

    method, _ = load_for_inference(ckpt)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.70 GiB")

    monkeypatch.setattr(zp, "predict_image", oom)
    img = next(Path(voc_root, "JPEGImages").glob("*.jpg"))
    with pytest.raises(ValueError, match=r"out of memory .*crop_batch= \(now 4\).*short_side="):
        zp.predict_paths(method, [img], tmp_path, (0.5,) * 3, (0.5,) * 3, log=None, crop_batch=4)
