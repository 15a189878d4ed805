"""What every command shares: stderr logging, the one error boundary, numeric option checks.

Torch-free, like every module of this package at import time, so ``glide --help`` stays quick.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..bounds import check_number
from ..errors import GlideError

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)


def log(message: str, **style) -> None:
    """A line on stderr that does not tear an active progress bar."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.secho(message, err=True, **style)


def warn(message: str) -> None:
    log(f"Warning: {message}", fg="yellow")


@contextlib.contextmanager
def expected_errors() -> Iterator[None]:
    """The CLI's one error boundary: glide's expected failures (``GlideError``), bad values
    (``ValueError``) and an ``OSError`` about a named path become one ``Error: ...`` line;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except (GlideError, ValueError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from e
    except OSError as e:
        if e.filename is None:
            raise
        raise click.ClickException(f"{e.filename}: {e.strerror or e}") from e


@contextlib.contextmanager
def visible_warnings() -> Iterator[None]:
    """Show glide's warnings as ``Warning: ...`` lines, each message once, whatever the
    interpreter's warning filters say."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in seen:
            seen.add(text)
            warn(text)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=UserWarning, module=r"glide(\.|$)")
        warnings.showwarning = show
        yield


def command_body(fn: Callable) -> Callable:
    """Decorator for command callbacks: expected errors -> ``Error:`` lines, warnings visible."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with visible_warnings(), expected_errors():
            return fn(*args, **kwargs)

    return wrapper


class Number(click.ParamType):
    """A numeric option checked by ``glide.bounds.check_number`` when parsed, so a non-finite or
    out-of-range value is refused before anything loads, naming the flag:
    ``Error: --guidance-scale must be a finite number >= 0, got 'inf'``."""

    def __init__(self, *, integer: bool = False, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False):
        self.integer = integer
        self.bounds = dict(low=low, high=high, low_open=low_open, high_open=high_open)
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        flag = (param.opts[0] if param.param_type_name == "option" else param.human_readable_name) if param else "value"
        try:
            return check_number(flag, value, integer=self.integer, **self.bounds)
        except ValueError as e:
            raise click.UsageError(str(e), ctx) from None



class Steps(Number):
    """``--steps``: a step count N (evenly spaced, the noisiest step included) or a respacing that
    also says where the steps go: ``logsnrN``, ``karrasN``, ``trailingN``, ``ddimN``, ``fast27``."""

    name = "steps"

    def __init__(self):
        super().__init__(integer=True, low=1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if not isinstance(value, str) or not str(value).strip()[:1].isalpha():  # a number: checked as one
            return super().convert(value, param, ctx)
        from ..diffusion import step_count

        flag = param.opts[0] if param else "--steps"
        try:
            step_count(str(value))
        except ValueError as e:
            raise click.UsageError(f"{flag}: {e}", ctx) from None
        return str(value).strip()


SMALL_MODEL_PARAMS = 20_000_000  # below this, --threads auto uses one thread on the CPU


class Threads(Number):
    """``--threads``: ``auto`` or an integer >= 1."""

    def __init__(self):
        super().__init__(integer=True, low=1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return super().convert(value, param, ctx)
        except click.UsageError as e:
            raise click.UsageError(f"{e.message} (or auto)", ctx) from None
