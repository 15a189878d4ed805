"""The ``glide`` group: every command registered here, directly.

Each command module imports torch only inside its commands, so ``glide --help`` (and any
command's ``--help``) never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from .common import CONTEXT_SETTINGS
from .evaluate import evaluate
from .generate import edit, inpaint, sample
from .manage import convert, download, models
from .serve import serve
from .train import train


class GlideGroup(click.Group):
    """Lists commands in the order they were added (click sorts them by name)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group("glide", cls=GlideGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="glide", prog_name="glide")
def cli() -> None:
    """GLIDE text-guided diffusion: generate, inpaint and edit images from text.

    \b
    Quickstart (the bundled shapes cascade: offline, a few seconds on a CPU):
      glide sample "a small red circle above a large blue square"
    \b
    The official weights (about 1.6 GB):
      glide download base upsample
      glide sample "an oil painting of a corgi" --model openai

    Checkpoints are cached in $GLIDE_CACHE/checkpoints (default ~/.cache/glide/checkpoints).
    Run 'glide COMMAND --help' for the options of a command.
    """


for command in (sample, inpaint, edit, download, convert, models, train, evaluate, serve):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``glide`` console script, ``python -m glide`` and ``torchrun -m glide``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="glide")
