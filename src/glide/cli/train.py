"""``glide train``: every ``TrainConfig`` field is a flag, plus ``--config FILE.yaml``.

Precedence, lowest first: defaults, the resumed run's ``config.yaml`` (with ``--resume``),
``--config FILE.yaml``, flags given on the command line. Runs under torchrun as
``torchrun --nproc_per_node N -m glide train ...``. Numbers are checked by ``TrainConfig`` (through
``glide.bounds.check_number``) before anything is built.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from ..training.config import LR_SCHEDULES, PRECISIONS, STAGES, TRAINABLE, TrainConfig, field_types, load_yaml, merge
from .common import command_body

_CHOICES = {"stage": STAGES, "precision": PRECISIONS, "lr_schedule": LR_SCHEDULES, "train": TRAINABLE}
_MULTIPLE = ("sample_prompts", "model_overrides")


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; containers are taken as strings and parsed by TrainConfig."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in (int, float, str, bool) else str


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    else:
        value = f.default_factory()  # type: ignore[misc]
    if value in (None, (), {}, ""):
        return ""
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f" [default: {value}]"


def _options(command):
    """Decorate ``command`` with one click option per TrainConfig field (default None = not given)."""
    hints = field_types()
    for f in reversed(dataclasses.fields(TrainConfig)):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "") + _default_text(f)
        kind = _base_type(hints[f.name])
        if kind is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
        elif f.name in _MULTIPLE:
            option = click.option(flag, f.name, multiple=True, help=help_text + " (repeatable)")
        elif f.name in _CHOICES:
            option = click.option(flag, f.name, type=click.Choice(_CHOICES[f.name]), default=None, help=help_text)
        elif "flag_value" in f.metadata:
            option = click.option(flag, f.name, is_flag=False, flag_value=f.metadata["flag_value"], default=None,
                                  help=help_text)
        else:
            option = click.option(flag, f.name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


def _resumed_run_config(given: dict[str, Any], file_layer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """With --resume: the options the run was started with, and where its folder is."""
    from ..checkpoints.files import STATE_FILE

    resume = given.get("resume", file_layer.get("resume"))
    if resume is None:
        return {}, {}
    if resume in ("auto", "latest"):
        run_dir = Path(given.get("out") or file_layer.get("out") or TrainConfig.out)
        extra: dict[str, Any] = {}
    else:
        path = Path(resume)
        run_dir = path.parents[1] if (path / STATE_FILE).is_file() else path
        extra = {} if ("out" in given or "out" in file_layer) else {"out": str(run_dir)}
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return {}, extra
    previous = load_yaml(config_file)
    for key in ("resume", "overwrite", "out"):
        previous.pop(key, None)
    return previous, extra


@click.command("train", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of options (flag names, dashes or underscores); flags given here win")
@_options
@command_body
def train(config_file: str | None, **flags: Any) -> None:
    """Train a GLIDE model: text-to-image base, upsampler, inpainting, noised CLIP or noisy classifier.

    \b
    Examples:
      glide train --stage base --model tiny-base --data shapes --steps 2000 --out runs/shapes
      glide train --stage base --init openai:base --data my-captions.csv --lr 1e-5 --out runs/finetune
      glide train --resume --out runs/shapes --steps 4000
      torchrun --standalone --nproc_per_node 8 -m glide train --stage base --data 'shards-{000..099}.tar' ...
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..training.trainer import TrainingInterrupted
    from ..training.trainer import train as run_training

    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    try:
        file_layer = load_yaml(config_file) if config_file else {}
        previous, location = _resumed_run_config(given, file_layer)
        config = merge(previous, location, file_layer, given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # an expected failure becomes one ``Error:`` line (command_body); the trainer has
        # already stopped its data-loader workers
        with logging_redirect_tqdm():
            run_dir = run_training(config)
    except TrainingInterrupted as exc:
        click.echo(f"Interrupted: {exc}. Continue with: glide train --resume --out {config.out}", err=True)
        sys.exit(130)
    except OSError as exc:  # the run's own files and disk (e.g. full): the run folder is the path at fault
        if exc.filename is not None:
            raise
        raise click.ClickException(f"{exc} (run folder {config.out})") from exc
    click.echo(f"run folder: {run_dir}")
