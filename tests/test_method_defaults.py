"""A method built in Python equals the shipped config: every constructor default of every method is the value its
configs/method/<name>.yaml writes, and every constructor setting is written there."""

from __future__ import annotations

import inspect

import pytest
import yaml

from conftest import REPO
from zss.methods import ChimeraSeg, ClipRC, ClipZSS, SeenOnlyBaseline
from zss.methods.clip_zss import CLIP_ES_DEFAULTS

METHOD_CONFIGS = REPO / "configs" / "method"
#: config name -> the class whose defaults it states
DEFAULTS = {"baseline": SeenOnlyBaseline, "clip_zss": ClipZSS, "chimera_seg": ChimeraSeg, "clip_rc": ClipRC}
#: presets: deltas over one of the configs above (paper settings, ZegCLIP on CLIP-RC's machinery), not defaults
PRESETS = {"clip_zss_paper": "clip_zss", "chimera_seg_paper": "chimera_seg", "zegclip": "clip_rc"}
#: config keys that are no constructor argument
BOOKKEEPING = {"_target_", "name", "defaults"}
#: constructor arguments no default config writes: free-form pass-through (None in every default config)
PYTHON_ONLY = {"pl_kwargs"}


def _config(name: str) -> dict:
    """The config file's own keys plus its shared sub-group blocks (``- transductive: default`` ->
    configs/method/transductive/default.yaml at ``transductive``), as Hydra places them."""
    cfg = yaml.safe_load((METHOD_CONFIGS / f"{name}.yaml").read_text())
    for entry in cfg.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                if not group.startswith("/") and "@" not in group:
                    block = yaml.safe_load((METHOD_CONFIGS / group / f"{option}.yaml").read_text())
                    cfg[group] = {**block, **(cfg.get(group) or {})}
    return cfg


def _settings(cls) -> dict[str, object]:
    """The method's own settings as flat config keys with their constructor defaults: the keyword-only arguments
    with each grouped setting (``glm=GLMSettings()``) expanded to its flat keys (``glm_tau`` ...), plus
    ``transductive``."""
    out = cls.flat_defaults()
    out["transductive"] = inspect.signature(cls).parameters["transductive"].default
    return out


def test_method_configs_state_plain_values():
    """A method config states its values itself: no per-benchmark ``recipe`` block and no interpolation (the old
    ``${oc.select:method.recipe.<benchmark>...}``); a reported row's other values are an experiment file's
    (configs/experiment/<benchmark>_<method>.yaml)."""
    for path in sorted(METHOD_CONFIGS.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        assert "recipe" not in cfg, f"{path}: a method config has no recipe block (put row values in an experiment)"
        assert "${" not in yaml.safe_dump(cfg), f"{path}: a method config states plain values, no interpolation"


def test_every_method_config_is_a_default_or_a_named_preset():
    assert {p.stem for p in METHOD_CONFIGS.glob("*.yaml")} == set(DEFAULTS) | set(PRESETS)
    for preset, base in PRESETS.items():
        cfg = _config(preset)
        assert base in cfg["defaults"] and "_target_" not in cfg  # a delta: the base's class and defaults
        unknown = set(cfg) - BOOKKEEPING - set(_settings(DEFAULTS[base]))
        assert not unknown, f"{preset}.yaml sets {unknown}, which {DEFAULTS[base].__name__} does not take"


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_constructor_defaults_equal_the_shipped_config(name):
    cls, cfg = DEFAULTS[name], _config(name)
    assert cfg["_target_"] == f"{cls.__module__}.{cls.__qualname__}"
    settings = _settings(cls)
    keys = set(cfg) - BOOKKEEPING
    assert keys <= set(settings), f"{name}.yaml keys {keys - set(settings)} are no {cls.__name__} argument"
    assert set(settings) - keys <= PYTHON_ONLY, f"{cls.__name__} arguments missing from {name}.yaml"
    wrong = {}
    for key in sorted(keys):
        want, have = cfg[key], settings[key]
        if key == "transductive":  # None = configure_transductive's defaults; the config spells them out
            trans = {
                k: p.default for k, p in inspect.signature(cls.configure_transductive).parameters.items() if k != "self"
            }
            assert have is None
            have = trans
        elif key == "pl_clip_es":  # None = CLIP_ES_DEFAULTS; the CLIP-ES text data come from a benchmark preset
            assert have is None
            have = {k: CLIP_ES_DEFAULTS[k] for k in want}
        if have != want:
            wrong[key] = (have, want)
    assert not wrong, f"{cls.__name__} default != configs/method/{name}.yaml (python, yaml): {wrong}"


def test_checkpoint_defaults_name_real_arguments_that_changed():
    """``CHECKPOINT_DEFAULTS`` (values for keys an older checkpoint's config lacks) only list arguments whose
    default changed: anything else would be a silent second default."""
    for cls in DEFAULTS.values():
        settings = _settings(cls)
        for key, old in cls.CHECKPOINT_DEFAULTS.items():
            assert key in settings and settings[key] != old, (cls.__name__, key)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_grouped_settings_cover_the_flat_keys_once(name):
    """Every flat key of a settings group is distinct from every other flat key and constructor argument, so
    ``from_flat`` groups each config key into exactly one place, and ``to_flat`` inverts the grouping."""
    cls = DEFAULTS[name]
    keys = [k for group in cls.SETTINGS.values() for k in group.flat_keys().values()]
    plain = [k for k, p in inspect.signature(cls).parameters.items() if k not in cls.SETTINGS]
    assert len(keys) == len(set(keys)) and not set(keys) & set(plain)
    for arg, group in cls.SETTINGS.items():
        default = inspect.signature(cls).parameters[arg].default
        assert (
            type(default) is group
            and group(**{f: default.to_flat()[k] for f, k in group.flat_keys().items()}) == default
        )
