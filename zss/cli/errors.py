"""How every zss command reports a user error: one ``zss: error:`` line and exit code 1 (``ZSS_DEBUG=1`` shows the
traceback), and the override syntax check that runs before Hydra. Hydra-free except :func:`check_override_syntax`,
which imports Hydra's override parser when called.
"""

from __future__ import annotations

import functools
import os
import sys

#: Environment variables that show the full traceback of a failed command instead of its one message (README).
DEBUG_ENV = ("ZSS_DEBUG", "HYDRA_FULL_ERROR")


def debug_enabled() -> bool:
    """True when ``ZSS_DEBUG`` or ``HYDRA_FULL_ERROR`` is set to something other than ``""``/``0``."""

    return any(os.environ.get(k, "") not in ("", "0") for k in DEBUG_ENV)


def user_error_message(err: BaseException) -> str | None:
    """The message to show for an error caused by the user's input, or None for anything else (a bug).

    User errors: ValueError, OSError (missing/unreadable files, permissions), KeyError, FloatingPointError
    (non-finite loss), the teacher-weights errors, a CUDA out-of-memory, and Hydra's InstantiationException
    around one of those or a TypeError (a config key the constructor does not take). A DataLoader worker's
    copy of the error keeps only the original message (not the worker's traceback text).
    """
    import torch
    from hydra.errors import InstantiationException

    from zss.teachers.clip import TeacherWeightsError

    kinds = (ValueError, OSError, KeyError, FloatingPointError, TeacherWeightsError, torch.OutOfMemoryError)
    if isinstance(err, InstantiationException):
        return str(err) if isinstance(err.__cause__, kinds + (TypeError,)) else None
    if not isinstance(err, kinds):
        return None
    msg = err.args[0] if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str) else str(err)
    if "Original Traceback" in msg:  # re-raised from a DataLoader worker: "...\n<Type>: <message>"
        msg = msg.rsplit(f"\n{type(err).__name__}: ", 1)[-1]
    return msg.strip() or type(err).__name__


def report_user_errors(fn, *args):
    """``fn(*args)``; a user error (:func:`user_error_message`) is printed as ONE message on stderr and the
    process exits with code 1, without a traceback (``ZSS_DEBUG=1`` re-raises it). Other errors propagate.

    Raises:
        SystemExit: code 1 after a user error.
    """
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - sorted by user_error_message
        msg = user_error_message(e)
        if msg is None or debug_enabled():
            raise
        print(f"zss: error: {msg}\n(set ZSS_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def check_override_syntax(args: list[str]) -> None:
    """Parse each ``key=value`` override with Hydra's grammar before Hydra does, so that a value Hydra cannot lex
    (non-ASCII letters ``classes=café``, an apostrophe ``name=it's``) gets one line saying how to quote it.
    Command-line flags (``-m``, ``--cfg`` ...) are left to Hydra.

    Raises:
        ValueError: naming the override and a quoted form Hydra reads.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-") or "=" not in a:
            continue
        try:
            parser.parse_overrides([a])
        except OverrideParseException as e:
            key, _, val = a.partition("=")
            quoted = f'{key}=\\"{val}\\"' if "'" in val else f"{key}=\"'{val}'\""
            why = str(e).splitlines()[0].split(":")[0]
            raise ValueError(
                f"cannot read the override {a!r} ({why}: Hydra's override grammar does not take this "
                f"value unquoted, e.g. non-ASCII letters or an apostrophe); quote the value, in a shell: "
                f"{quoted}"
            ) from None


def one_line_errors(fn):
    """Wrap a command: a user error (:func:`zss.cli.errors.user_error_message`) ends in ONE ``zss: error:`` line on
    stderr and exit code 1, as for the Hydra commands (``ZSS_DEBUG=1`` shows the traceback); Hydra is imported
    only when an error is being sorted."""

    @functools.wraps(fn)
    def run(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except Exception as e:  # noqa: BLE001 - sorted by user_error_message
            from zss.cli.errors import debug_enabled, user_error_message

            msg = user_error_message(e)
            if msg is None or debug_enabled():
                raise
            print(f"zss: error: {msg}\n(set ZSS_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
            return 1

    return run
