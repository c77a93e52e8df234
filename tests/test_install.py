"""zss installed like a real package: ``pip install .`` (not editable) into a temporary folder ships the
configs as package data, and the console commands find them from any working directory."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())


#: console command -> its wrapper in scripts/ (same function)
WRAPPERS = {
    "zss-train": "train",
    "zss-eval": "eval",
    "zss-predict": "predict",
    "zss-check": "check_data",
    "zss-clip-es-masks": "clip_es_masks",
    "zss-teach-clip": "teach_clip",
    "zss-aggregate": "aggregate",
    "zss-plot": "plot",
    "zss-prepare-cocostuff": "prepare_cocostuff",
    "zss-prepare-context": "prepare_context",
    "zss-make-world": "make_world",
}


def test_every_subpackage_is_listed_for_the_wheel():
    setup = _pyproject()["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "zss").rglob("__init__.py"))
    listed = setup["packages"]
    missing = sorted(set(found) - set(listed))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml (else pip install . drops them)"
    assert "zss.configs" in listed and setup["package-dir"]["zss.configs"] == "configs"


@pytest.mark.parametrize("command", sorted(WRAPPERS))
def test_console_command_and_script_call_the_same_function(command):
    module, func = _pyproject()["project"]["scripts"][command].split(":")
    tree = ast.parse((REPO / "scripts" / f"{WRAPPERS[command]}.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert (module, func) in imported, f"scripts/{WRAPPERS[command]}.py must call {module}.{func}"
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))


def _setuptools_ok() -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 68
    except importlib.metadata.PackageNotFoundError:
        return False


def test_non_editable_install_finds_its_configs_from_elsewhere(tmp_path, voc_root):
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for name in ("zss", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    site = tmp_path / "site"
    # offline: no dependencies, and the venv's setuptools when it has one (else pip fetches it from PyPI)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(src)]
    if _setuptools_ok():
        cmd.insert(5, "--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (site / "zss" / "configs" / "train.yaml").is_file()
    assert (site / "zss" / "configs" / "experiment" / "demo.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"  # no configs/ here and no zss source tree above
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("ZSS_DEBUG", None)

    def run(*args):
        out = subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        return out.stdout

    where = run(sys.executable, "-c", "import zss, zss.resources as r; print(zss.__file__); print(r.config_dir())")
    assert where.split() == [str(site / "zss" / "__init__.py"), str(site / "zss" / "configs")]
    # a console command composes the demo experiment (prints it, runs nothing)
    job = run(str(site / "bin" / "zss-train"), "experiment=demo", "--cfg", "job")
    assert "allow_oracle_teacher: true" in job and "zss.teachers.oracle" in job
    # the checker composes its own config and a dataset preset of the installed package
    check = run(str(site / "bin" / "zss-check"), "dataset=voc20", f"dataset.root={voc_root}", "split=val")
    assert check.rstrip().endswith("OK") and "| val | 20 | 20 | 20 |" in check
