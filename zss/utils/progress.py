"""Progress bars and console log lines that share one terminal (tqdm).

Every long loop of zss (training, evaluation, CLIP-ES masks) draws its bar with :func:`progress_bar`, and the
commands run inside :func:`console_logging`, which sends the console log handlers' lines through
``tqdm.write``: a log line is printed above the bars instead of being glued to the end of one. The data
converters and the dataset checker (``zss.data``, which imports nothing from the engine) call ``tqdm`` with
the same settings.

Source: not in the papers: our tooling, on tqdm (``tqdm.contrib.logging.logging_redirect_tqdm``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["progress_bar", "console_logging", "write"]


def progress_bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    tty_only: bool = True,
    leave: bool = True,
    unit: str = "it",
    initial: int = 0,
) -> tqdm:
    """A tqdm bar on stderr with zss's settings (width follows the terminal).

    Args:
        iterable: what to iterate over (None: update the bar by hand, ``bar.update(n)``).
        desc: the bar's label (``"train"``, ``"eval"``, ``"clip_es"`` ...).
        total: number of items (default ``len(iterable)`` when it has one).
        enabled: False draws nothing (e.g. on every rank but the main one).
        tty_only: draw only when stderr is a terminal (tqdm's ``disable=None``), so log files and captured
            output stay free of carriage-return frames; False draws everywhere (the training bar, which
            cluster logs read).
        leave: keep the finished bar on screen (False for a bar nested under another, e.g. evaluation
            during training).
        unit: what one item is (``"img"``, ``"file"`` ...).
        initial: items already done (a resumed run).

    Returns:
        a ``tqdm`` object (iterable, ``update``, ``set_postfix``, ``close``); a disabled one does nothing.

    Source: not in the papers: our default.
    """
    disable: bool | None = True if not enabled else (None if tty_only else False)
    return tqdm(
        iterable, desc=desc, total=total, disable=disable, leave=leave, unit=unit, initial=initial, dynamic_ncols=True
    )


@contextlib.contextmanager
def console_logging(loggers: Sequence[logging.Logger] | None = None) -> Iterator[None]:
    """Within the block, console log handlers (a ``StreamHandler`` on stdout or stderr) of ``loggers`` print
    through ``tqdm.write``: the line goes above the open bars, which are redrawn below it.

    Args:
        loggers: loggers whose handlers are redirected (default: the root logger, where Hydra's
            ``job_logging`` and ``logging.basicConfig`` put theirs). Nested use is harmless.

    Source: not in the papers: tqdm's ``logging_redirect_tqdm``.
    """
    with logging_redirect_tqdm(loggers=None if loggers is None else list(loggers)):
        yield


def write(message: str) -> None:
    """Print one line to stdout above any open bar (``tqdm.write``): for ``print``-style messages during a loop."""
    tqdm.write(message)
