"""Evaluation of generated images in the shapes domain: the judge (attribute classifier) and
caption accuracy, FID / precision / recall, CLIP score, bootstrap intervals, sweeps.

* ``judge``: ``load_judge`` (``bundled:shapes-judge``), ``read_scenes``, ``score_caption``;
* ``metrics``: ``Features``, ``frechet_distance``, ``precision_recall``, ``clip_score``,
  ``bootstrap_ci``, ``fid_with_ci``, ``judge_features``, ``inception_features``;
* ``report``: ``evaluate_images`` and the folder / caption readers and writers;
* ``sweep``: ``run_sweep`` over guidance scales; ``plots``: matplotlib figures;
* ``train_judge``: ``python -m glide.evaluation.train_judge`` reproduces the bundled judge.

Importing this package is cheap; the submodules import torch.
"""

from __future__ import annotations
