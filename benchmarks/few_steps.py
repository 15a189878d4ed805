"""Few-step sampling quality on the bundled cascade: sampler x step spacing x step count.

Each setting samples the same held-out single-object captions at the default guidance (CFG 3) and
is judged by the bundled attribute classifier: whole-caption accuracy and shapes-FID with 95%
bootstrap intervals, against DDPM with many steps (``--reference``). Images are cached per setting
under ``OUT/samples`` (``glide eval paper``'s cache: a killed run resumes, and the paper run's
folder can be reused), tables go to ``OUT/samplers.{json,csv}``, the plot to ``OUT/samplers.png``,
grids to ``OUT/grids``. ``--upsampler-steps`` adds the upsampler: real 64 px renders reduced to
32 px and brought back with each sampler / spacing / step count / strength, PSNR against the truth
(``OUT/upsampler.{json,csv}``; its recommended DDPM 50 at strength 0.3 is the reference row).

    python benchmarks/few_steps.py --out runs/few-steps --count 200
    python benchmarks/few_steps.py --out docs/results/few-steps --count 500 --steps 5 8 10 \\
        --samplers ddpm dpm++2m-sde --spacings even logsnr --reference 100 250

One core: ~0.2 s per image at 10 steps (32 px, CFG doubles the batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from glide.evaluation.paper import PAPER_BASE, Models, Setting, run_paper
from glide.pipelines import StageOptions
from glide.sampling import check_sampler

SPACINGS = ("even", "trailing", "logsnr", "karras")


def timesteps(spacing: str, steps: int) -> int | str:
    """The StageOptions.timesteps of ``steps`` steps spaced by ``spacing`` ("even" = plain N)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    return steps if spacing == "even" else f"{spacing}{steps}"


def settings(samplers, spacings, counts, references, threshold: float | None = None) -> list[Setting]:
    extra = {"clip_denoised": threshold} if threshold else {}
    label = f" threshold {threshold:g}" if threshold else ""
    out = []
    for sampler in samplers:
        for spacing in spacings:
            for n in counts:
                options = dataclasses.replace(PAPER_BASE, sampler=check_sampler(sampler),
                                              timesteps=timesteps(spacing, n), sampler_options=extra)
                out.append(Setting(f"{sampler} {spacing}{label}", n, options))
    for n in references:
        out.append(Setting("reference-ddpm", n, dataclasses.replace(PAPER_BASE, sampler="ddpm", timesteps=n)))
    return out


def upsampler_variants(samplers, spacings, counts, strengths) -> list[StageOptions]:
    return [StageOptions(sampler=check_sampler(sampler), timesteps=timesteps(spacing, n), guidance_scale=1.0,
                         strength=strength)
            for sampler in samplers for spacing in spacings for n in counts for strength in strengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200, help="held-out single-object captions per setting")
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "dpm++2m-sde", "dpm++2m", "dpm++3m"])
    parser.add_argument("--spacings", nargs="+", default=list(SPACINGS), choices=SPACINGS)
    parser.add_argument("--steps", nargs="+", type=int, default=[10])
    parser.add_argument("--reference", nargs="*", type=int, default=[100], help="DDPM step counts to compare with")
    parser.add_argument("--upsampler-steps", nargs="*", type=int, default=[],
                        help="respaced step counts of the upsampler (model calls = count x strength)")
    parser.add_argument("--upsampler-samplers", nargs="+", default=["ddpm", "dpm++2m-sde", "dpm++2m"])
    parser.add_argument("--upsampler-spacings", nargs="+", default=["even"], choices=SPACINGS)
    parser.add_argument("--upsampler-strengths", nargs="+", type=float, default=[0.3])
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--threshold", type=float, help="dynamic thresholding at this quantile of |x_0|")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    experiments = (() if args.skip_base else ("samplers",)) + (("upsampler",) if args.upsampler_steps else ())
    chosen = settings(args.samplers, args.spacings, args.steps, args.reference, args.threshold)
    ups = upsampler_variants(args.upsampler_samplers, args.upsampler_spacings, args.upsampler_steps,
                             args.upsampler_strengths)
    result = run_paper(args.out, Models.bundled(), experiments=experiments, count=args.count, seed=args.seed,
                       batch_size=args.batch_size, samplers=chosen, upsamplers=ups)
    if "samplers" in result:
        rows = sorted(result["samplers"]["rows"], key=lambda r: (-r["acc_caption"], r["fid"]))
        print(f"{'setting':<28} {'steps':>5} {'caption acc':>12} {'95% CI':>15} {'shapes-FID':>10} {'s/img':>6}")
        for r in rows:
            lo, hi = r["caption_accuracy_ci95"]
            print(f"{r['family']:<28} {r['x']:>5g} {r['acc_caption']:>12.3f} {f'{lo:.3f}-{hi:.3f}':>15} "
                  f"{r['fid']:>10.2f} {r['seconds_per_image']:>6.3f}")
    if "upsampler" in result:
        print(f"{'upsampler':<40} {'calls':>5} {'PSNR dB':>8} {'caption acc':>12} {'s/img':>6}")
        for r in result["upsampler"]["rows"]:
            print(f"{r['method']:<40} {r['model_calls'] or 0:>5} {r['psnr_db'] or 0:>8.2f} "
                  f"{r['caption_accuracy']:>12.3f} {r['seconds_per_image']:>6.3f}")
    (args.out / "took.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
