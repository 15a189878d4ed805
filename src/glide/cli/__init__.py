"""The ``glide`` command line (click): sample, inpaint, edit, download, convert, models, train.

    glide download base upsample
    glide sample "an oil painting of a corgi" --model openai
    glide sample "a red circle above a blue square" --model random:tiny-base --upsampler random:tiny-upsample

* ``app``: the group and ``main``; ``common``: logging, the error boundary, numeric options;
* ``options`` / ``prepare`` / ``outputs`` / ``generate``: sample, inpaint, edit (checks before
  loading, chunked sampling, streamed PNGs);
* ``manage``: download, convert, models; ``train``: glide train.

Paths go to stdout (one per written file); logs, warnings and progress bars go to stderr.
Expected failures (``GlideError``, ``ValueError``, an ``OSError`` about a path) print one
``Error: ...`` line and exit with a non-zero status; anything else keeps its traceback.
"""

from .app import cli, main
from .outputs import slugify

__all__ = ["cli", "main", "slugify"]
