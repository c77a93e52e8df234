"""The command layer: one module per command, the only part of zss that reads Hydra configs.

| command (console entry, ``scripts/`` wrapper) | module |
|---|---|
| ``zss-train``, ``scripts/train.py`` | :mod:`zss.cli.train` |
| ``zss-eval``, ``scripts/eval.py`` | :mod:`zss.cli.eval` |
| ``zss-predict``, ``scripts/predict.py`` | :mod:`zss.cli.predict` |
| ``zss-check``, ``scripts/check_data.py`` | :mod:`zss.cli.check` |
| ``zss-clip-es-masks``, ``scripts/clip_es_masks.py`` | :mod:`zss.cli.clip_es` |
| ``zss-teach-clip``, ``scripts/teach_clip.py`` | :mod:`zss.cli.teach_clip` |
| ``zss-make-world``, ``scripts/make_world.py`` | :mod:`zss.cli.make_world` |
| ``zss-prepare-cocostuff`` / ``zss-prepare-context`` | :mod:`zss.cli.prepare` |
| ``zss-aggregate`` / ``zss-plot`` | :mod:`zss.cli.aggregate` / :mod:`zss.cli.plot` |

Shared helpers: :mod:`zss.cli.common` (building the benchmark, data, teacher and student from a composed config;
the run-dir and report files) and :mod:`zss.cli.errors` (one ``zss: error:`` line per user error). Nothing
below this package imports it.
"""
