"""The trainer end to end on tiny models: every stage learns, resume is bit-exact (also after
kill -9), bad input fails clearly, checkpoints load and sample."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from glide.checkpoints import load_model, read_checkpoint
from glide.cli.train import train as train_command
from glide.data import build_dataset, collate
from glide.models import config_from_dict
from glide.models.presets import preset_config
from glide.training import EMA, ConfigError, TrainConfig, TrainingInterrupted, learning_rate, train
from glide.training.build import create_model
from glide.training.distributed import LaunchError
from glide.training.loader import DataStream, open_dataset
from glide.training.stages import Text2ImStage, evaluate_loss, make_stage, sample_seeds
from glide.training.state import ResumeError, list_step_dirs

from .helpers import REPO_ROOT, assert_same, metric_rows, tiny, weights

# ------------------------------------------------------------------------------------------
# Every stage lowers its loss on a fixed small batch

STAGES = {
    "base": dict(model="tiny-base"),
    "upsample": dict(model="tiny-upsample", low_res_size=4, low_res_blur="0.2,0.6", low_res_noise="0,0.05"),
    "inpaint": dict(model="tiny-base-inpaint"),
    "upsample-inpaint": dict(model="tiny-upsample-inpaint", low_res_size=8),
    "clip": dict(model="tiny-clip", model_overrides={}, tokenizer=None, lr=3e-4, batch_size=4, data="shapes:4"),
    "classifier": dict(model="tiny-classifier", model_overrides={}, tokenizer=None, batch_size=4, data="shapes:4"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_lowers_the_loss(stage, tmp_path):
    options = dict(steps=8, lr=3e-3, log_every=4, batch_size=2, data="shapes:2")
    cfg = tiny(tmp_path / stage, stage=stage, **{**options, **STAGES[stage]})
    run = train(cfg)

    checkpoint = list_step_dirs(run)[-1]
    trained = load_model(checkpoint, weights="model")
    config = read_checkpoint(checkpoint / "model.safetensors")[1]
    initial = create_model(config_from_dict(config), cfg.seed)
    dataset = build_dataset(cfg.data, trained.config.image_size)
    batch = collate([dataset[i] for i in range(len(dataset))])
    stage_ = make_stage(cfg, trained)
    before, after = evaluate_loss(stage_, initial, batch), evaluate_loss(stage_, trained, batch)
    assert after < 0.8 * before, f"{stage}: loss {before:.4f} -> {after:.4f}"
    rows = metric_rows(run)
    assert [r["step"] for r in rows] == [4, 8]
    assert {"loss", "q0", "q3", "grad_norm", "lr", "images_per_s", "skipped_steps"} <= rows[-1].keys()
    if stage not in ("clip", "classifier"):
        assert {"mse", "vb"} <= rows[-1].keys()


# ------------------------------------------------------------------------------------------
# Resume: 3 steps + 3 more == 6 straight, bit for bit (also after kill -9 in the middle of a save)

RESUME_OPTIONS = dict(steps=6, warmup_steps=2, model_overrides={"text_ctx": 24, "dropout": 0.1}, random_flip=True,
                      data="shapes:6", batch_size=4, sample_every=6, sample_steps=2, num_samples=2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """Six steps without interruption (dropout, caption dropout and flips all draw random numbers)."""
    return train(tiny(tmp_path_factory.mktemp("straight") / "run", **RESUME_OPTIONS))


def final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    checkpoint = list_step_dirs(run)[-1]
    assert checkpoint.name == "step-00000006"
    return {f.name: weights(f) for f in sorted(checkpoint.glob("*.safetensors"))}


def test_resume_gives_the_same_weights(straight_run, tmp_path):
    out = tmp_path / "resumed"
    train(tiny(out, **{**RESUME_OPTIONS, "steps": 3}))
    assert [p.name for p in list_step_dirs(out)] == ["step-00000003"]
    train(tiny(out, **RESUME_OPTIONS, resume="auto"))
    expected, got = final_weights(straight_run), final_weights(out)
    assert expected.keys() == got.keys() == {"model.safetensors", "ema-0.9.safetensors", "ema-0.99.safetensors"}
    for name in expected:
        assert_same(expected[name], got[name])
    # metrics rows continue where the checkpoint was, without duplicates
    assert [r["step"] for r in metric_rows(out)] == [1, 2, 3, 4, 5, 6]
    state = torch.load(list_step_dirs(out)[-1] / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6 and state["samples_seen"] == 24


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads({threads})  # as in this process: float sums depend on the thread count
import glide.training.state as state
from glide.training import TrainConfig, train

real_save = torch.save
def save_then_die(obj, path, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 4:  # step 4's model files are written, the state not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)
state.torch.save = save_then_die
train(TrainConfig(**{config}))
"""


def test_kill_9_during_a_save_then_resume(straight_run, tmp_path):
    out = tmp_path / "killed"
    cfg = tiny(out, **RESUME_OPTIONS, save_every=2)
    script = KILLER.replace("{config}", repr(cfg.to_dict())).replace("{threads}", str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in list_step_dirs(out)] == ["step-00000002"]
    assert any(p.name.startswith(".tmp-step-00000004") for p in (out / "checkpoints").iterdir())

    train(cfg.replace(resume="auto"))
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
    expected, got = final_weights(straight_run), final_weights(out)
    for name in expected:
        assert_same(expected[name], got[name])


def test_trained_run_loads_and_samples(straight_run):
    from glide.diffusion import GaussianDiffusion
    from glide.guidance import text2im_denoiser
    from glide.sampling import sample

    model = load_model(straight_run)  # the latest checkpoint, slowest EMA
    assert_same(model.state_dict(), weights(straight_run / "checkpoints/step-00000006/ema-0.99.safetensors"))
    tokens, mask = model.tokenize(["a small red circle", "a large blue square"])
    denoiser = text2im_denoiser(model, tokens, mask, guidance_scale=3.0)
    diffusion = GaussianDiffusion.from_schedule(model.config.noise_schedule, 1000, "3")
    images = sample("ddim", denoiser, diffusion, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert (straight_run / "samples/step-00000006.png").is_file()
    assert Image.open(straight_run / "samples/step-00000006.png").size[0] > 2 * 16
    assert (straight_run / "config.yaml").is_file() and (straight_run / "metrics.csv").is_file()


# ------------------------------------------------------------------------------------------
# Bad input


def test_refuses_a_folder_holding_another_run(straight_run, tmp_path):
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(tiny(straight_run))
    out = tmp_path / "old"
    (out / "checkpoints/step-00000009").mkdir(parents=True)
    (out / "config.yaml").write_text("stage: base\n")
    (out / "notes.txt").write_text("mine")
    train(tiny(out, steps=1, overwrite=True))
    assert [p.name for p in list_step_dirs(out)] == ["step-00000001"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_refuses_another_stage_or_shape(straight_run, tmp_path):
    with pytest.raises(ResumeError, match="--stage base"):
        train(tiny(tmp_path / "a", **{**RESUME_OPTIONS, "model": "tiny-upsample"}, stage="upsample",
                   resume=str(straight_run)))
    with pytest.raises(ResumeError, match="image_size=16"):
        train(tiny(tmp_path / "b", **{**RESUME_OPTIONS, "image_size": 32}, resume=str(straight_run)))
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        train(tiny(tmp_path / "c", resume=str(tmp_path)))


def write_image_folder(root: Path, good: int = 4) -> Path:
    root.mkdir(parents=True)
    for i in range(good):
        Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a picture number {i}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "broken.txt").write_text("a broken picture")
    Image.new("RGB", (20, 20)).save(root / "latin1.png")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


ONE_OF_EACH = {"skipped_images": 1, "skipped_captions": 1, "missing_captions": 1, "read_errors": 0}


def test_corrupt_data_is_skipped_and_counted_once_per_file(tmp_path):
    data = write_image_folder(tmp_path / "images")
    Image.new("RGB", (20, 20)).save(data / "uncaptioned.png")
    # 7 files, 5 usable: 10 steps of 2 read every file 3-4 times, spread over 2 workers.
    run = train(tiny(tmp_path / "run", data=str(data), batch_size=2, steps=10, log_every=5, num_workers=2,
                     tokenizer="train:260"))
    rows = metric_rows(run)
    assert [{k: row[k] for k in ONE_OF_EACH} for row in rows] == [ONE_OF_EACH, ONE_OF_EACH]
    log = (run / "train.log").read_text()
    assert "broken.png" in log and "latin1.txt is not UTF-8" in log


def test_skip_counts_are_a_union_over_epochs_workers_and_ranks(tmp_path):
    data = write_image_folder(tmp_path / "images")
    Image.new("RGB", (20, 20)).save(data / "uncaptioned.png")
    cfg = tiny(tmp_path / "run", data=str(data), batch_size=2, num_workers=2)
    stream = DataStream(open_dataset(cfg, 16), cfg, micro_batch=2, rank=0, world_size=1, start_step=0)
    try:
        for _ in range(12):  # 24 samples: every file read 4 to 5 times
            next(stream)
    finally:
        stream.close()
    assert stream.stats() == ONE_OF_EACH
    assert stream.all_stats(lambda mine: [mine, mine]) == ONE_OF_EACH  # a second rank met the same files
    # Only keys new since the last call travel; another rank's new file adds to the union.
    gathered = []
    counts = stream.all_stats(lambda mine: gathered.append(mine) or [mine, {"skipped_images": {"elsewhere.png"}}])
    assert gathered == [{}] and counts == {**ONE_OF_EACH, "skipped_images": 2}


def test_bad_data_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory"):
        train(tiny(tmp_path / "a", data=str(tmp_path / "missing")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no usable training data"):
        train(tiny(tmp_path / "b", data=str(broken), tokenizer=None))
    images = write_image_folder(tmp_path / "flat")
    with pytest.raises(ConfigError, match="inside a class subfolder"):
        train(tiny(tmp_path / "c", stage="classifier", model="tiny-classifier", model_overrides={}, tokenizer=None,
                   data=str(images)))
    table = tmp_path / "table.csv"
    table.write_text("path,caption\n" + "".join(f"{images}/img{i}.png,picture {i}\n" for i in range(4)))
    with pytest.raises(ConfigError, match="needs class labels"):
        train(tiny(tmp_path / "c", stage="classifier", model="tiny-classifier", model_overrides={"num_classes": 3},
                   tokenizer=None, data=str(table)))
    with pytest.raises(ConfigError, match="not divisible by 4"):
        train(tiny(tmp_path / "d", image_size=18))
    with pytest.raises(ConfigError, match="glide download base"):
        train(tiny(tmp_path / "e", init="openai:base", tokenizer=None))
    with pytest.raises(ConfigError, match="stage 'upsample' needs a model with super_res=True"):
        train(tiny(tmp_path / "f", stage="upsample"))


def test_launch_and_precision_errors(tmp_path, monkeypatch):
    with pytest.raises(LaunchError, match="not divisible by world size 1 x --grad-accum 3"):
        train(tiny(tmp_path / "a", grad_accum=3))
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train(tiny(tmp_path / "b", precision="fp16", device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(LaunchError, match="torchrun"):
        train(tiny(tmp_path / "c"))


# ------------------------------------------------------------------------------------------
# Numerics and options


def test_ema_math():
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.tensor(0))
    ema = EMA(model, (0.9, 0.5))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-1.0)
        model.count.fill_(7)
    for _ in range(3):
        ema.update(model)
    for rate in (0.9, 0.5):
        average = ema.state_dict(rate)
        expected = 1.0 + (start["weight"] - 1.0) * rate**3
        torch.testing.assert_close(average["weight"], expected)
        torch.testing.assert_close(average["bias"], -1.0 + (start["bias"] + 1.0) * rate**3)
        assert int(average["count"]) == 7


def test_ema_rate_warms_up_with_the_step():
    assert EMA.warmed_up(0.9999, 0) == 0.1  # the first update mostly takes the new weights
    assert EMA.warmed_up(0.9999, 90) == 91 / 100
    assert EMA.warmed_up(0.9999, 10**6) == 0.9999 and EMA.warmed_up(0.5, 20) == 0.5
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, (0.99,))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)
    start = ema.state_dict(0.99)["weight"].clone()
    ema.update(model, step=1)
    after = ema.state_dict(0.99)["weight"]
    torch.testing.assert_close(after, 1.0 + (start - 1.0) * (2 / 11))


def test_nonfinite_step_is_skipped(tmp_path, monkeypatch):
    real_loss = Text2ImStage.loss
    calls = []

    def poisoned(self, *args, **kwargs):
        loss, metrics = real_loss(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), metrics) if len(calls) == 2 else (loss, metrics)

    monkeypatch.setattr(Text2ImStage, "loss", poisoned)
    run = train(tiny(tmp_path / "run", steps=3))
    assert [r["skipped_steps"] for r in metric_rows(run)] == [0, 1, 1]
    checkpoint = list_step_dirs(run)[-1]
    files = sorted(checkpoint.glob("*.safetensors"))
    assert len(files) == 3, files  # the model and its two EMA averages
    for path in files:
        assert all(torch.isfinite(v).all() for v in weights(path).values()), path.name
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert state["skipped_steps"] == 1
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values()]
    assert moments and all(torch.isfinite(t).all() for t in moments)


def test_interrupt_saves_a_checkpoint(tmp_path, monkeypatch):
    real_loss = Text2ImStage.loss
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(Text2ImStage, "loss", interrupted)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny(tmp_path / "run", steps=50, save_every=100))
    assert info.value.step == 2
    assert [p.name for p in list_step_dirs(tmp_path / "run")] == ["step-00000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_finetune_options(straight_run, tmp_path):
    """--init from a run, --train unet (text frozen), bf16 autocast, accumulation, activation checkpointing."""
    run = train(tiny(tmp_path / "ft", init=str(straight_run), tokenizer=None, train="unet", precision="bf16",
                     grad_accum=2, grad_checkpointing=True, steps=2, lr_schedule="cosine", data="shapes:6"))
    start = load_model(straight_run).state_dict()
    tuned = weights(list_step_dirs(run)[-1] / "model.safetensors")
    text = [k for k in tuned if k.startswith(("transformer.", "token_embedding", "positional_embedding"))]
    assert text and all(torch.equal(tuned[k], start[k]) for k in text)
    assert not torch.equal(tuned["out.2.weight"], start["out.2.weight"])
    assert [r["skipped_steps"] for r in metric_rows(run)] == [0, 0]


def test_learning_rate_schedules():
    base = dict(out="x", steps=110, lr=1.0, warmup_steps=10, min_lr=0.1)
    for schedule in ("constant", "cosine", "linear"):
        cfg = TrainConfig(**base, lr_schedule=schedule)
        assert learning_rate(cfg, 0) == pytest.approx(0.1)
        assert learning_rate(cfg, 9) == pytest.approx(1.0)
        assert learning_rate(cfg, 10) == pytest.approx(1.0)
        end = learning_rate(cfg, 110)
        assert end == pytest.approx(1.0 if schedule == "constant" else 0.1)
    assert learning_rate(TrainConfig(**base, lr_schedule="cosine"), 60) == pytest.approx(0.55)


def test_cli_config_file_flags_and_resume(tmp_path):
    out = tmp_path / "cli"
    config = tmp_path / "train.yaml"
    config.write_text(textwrap.dedent(f"""\
        stage: base
        model: tiny-base
        image-size: 16
        model_overrides: {{text_ctx: 24}}
        tokenizer: "train:300"
        data: "shapes:4"
        batch_size: 4
        steps: 5
        num_workers: 0
        out: {out}
        ema: "0.9"
        sample_every: 0
    """))
    runner = CliRunner()
    result = runner.invoke(train_command, ["--config", str(config), "--steps", "1", "--no-progress", "--lr", "0.002"])
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["steps"] == 1 and saved["lr"] == 0.002 and saved["image_size"] == 16 and saved["ema"] == [0.9]
    result = runner.invoke(train_command, ["--resume", "--out", str(out), "--steps", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_step_dirs(out)] == ["step-00000001", "step-00000002"]
    result = runner.invoke(train_command, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "nope" in result.output and "Traceback" not in result.output
    result = runner.invoke(train_command, ["--stage", "nonsense"])
    assert result.exit_code == 2 and "nonsense" in result.output


def write_shards(root: Path, shards: int = 2, per_shard: int = 5) -> str:
    """Webdataset tar shards of <key>.png + <key>.txt; one corrupt image, one caption that is not UTF-8."""
    import io
    import tarfile

    root.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(root / f"part-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                png = io.BytesIO()
                Image.new("RGB", (24, 24), (50 * i, 30 * s, 120)).save(png, format="PNG")
                image = b"junk" if (s, i) == (0, 1) else png.getvalue()
                caption = b"caf\xe9" if (s, i) == (1, 2) else f"shard {s} picture {i}".encode()
                for name, payload in ((f"s{s}i{i}.png", image), (f"s{s}i{i}.txt", caption)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(root / f"part-{{000..{shards - 1:03d}}}.tar")


def test_webdataset_shards_train_and_resume_exactly(tmp_path):
    data = write_shards(tmp_path / "shards")
    options = dict(data=data, batch_size=2, tokenizer="train:260", num_workers=1)
    straight = train(tiny(tmp_path / "straight", steps=4, **options))
    out = tmp_path / "resumed"
    train(tiny(out, steps=2, **options))
    train(tiny(out, steps=4, resume="auto", **options))
    assert_same(weights(list_step_dirs(straight)[-1] / "model.safetensors"),
                weights(list_step_dirs(out)[-1] / "model.safetensors"))
    last = metric_rows(straight)[-1]
    assert last["skipped_images"] >= 1 and last["skipped_captions"] >= 1


# ------------------------------------------------------------------------------------------
# The base stage's loss against the formulas, computed independently in float64


def _cosine_alpha_bars(steps: int = 1000) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: abar_t = prod_{i <= t} (1 - beta_i), beta capped at 0.999."""
    f = lambda s: math.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)])
    return np.cumprod(1 - betas)


def _hybrid_loss_by_hand(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """(mse, vb) per sample: eps target, KL / decoder NLL in bits with the learned-range variance,
    vb scaled by T / 1000 (= 1 here). The noise is recovered from x_t; the Gaussian CDF is exact."""
    abar = _cosine_alpha_bars()
    mse, vb = [], []
    for i in range(x0.shape[0]):
        k = int(t[i])
        a, a_prev = abar[k], (abar[k - 1] if k else 1.0)
        beta = 1 - a / a_prev
        eps_hat, v = out[i, :3].double(), out[i, 3:].double()
        x0_i, xt_i = x0[i].double(), x_t[i].double()
        noise = (xt_i - math.sqrt(a) * x0_i) / math.sqrt(1 - a)
        mse.append(((eps_hat - noise) ** 2).mean())
        post_var = lambda j: (1 - abar[j] / abar[j - 1]) * (1 - abar[j - 1]) / (1 - abar[j])
        post_logvar = math.log(post_var(max(k, 1)))  # 0 at t = 0: the clipped log reuses t = 1's value
        logvar = (v + 1) / 2 * math.log(beta) + (1 - (v + 1) / 2) * post_logvar
        coef1, coef2 = beta * math.sqrt(a_prev) / (1 - a), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
        pred_x0 = (xt_i - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)  # eps is frozen: only v is free
        mean = coef1 * pred_x0 + coef2 * xt_i
        if k == 0:
            normal = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
            upper = torch.where(x0_i > 0.999, torch.ones_like(mean), normal.cdf(x0_i + 1 / 255))
            lower = torch.where(x0_i < -0.999, torch.zeros_like(mean), normal.cdf(x0_i - 1 / 255))
            vb.append(-torch.log(upper - lower).mean() / math.log(2))
        else:
            true_mean = coef1 * x0_i + coef2 * xt_i
            kl = 0.5 * (-1 + logvar - post_logvar + math.exp(post_logvar) * torch.exp(-logvar)
                        + (true_mean - mean) ** 2 * torch.exp(-logvar))
            vb.append(kl.mean() / math.log(2))
    return torch.stack(mse), torch.stack(vb)


@pytest.mark.parametrize("caption_dropout", [0.0, 1.0])
def test_base_stage_loss_matches_the_formulas(caption_dropout, monkeypatch, tmp_path):
    """x_t, the eps target, the frozen-mean VLB (KL at t > 0, decoder NLL at t = 0), white = +1
    images, and the tokens of a dropped caption = the unconditional tokens CFG samples with."""
    import glide.training.stages as stages
    from glide.guidance import empty_prompt_tokens

    cfg = tiny(tmp_path, caption_dropout=caption_dropout)
    model = create_model(preset_config("tiny-base", image_size=16, text_ctx=24), 0)
    torch.nn.init.normal_(model.out[-1].weight, std=0.05)  # the zero-initialised output would hide the eps/v split
    stage = make_stage(cfg, model)
    chosen = torch.tensor([0, 1, 500, 999])
    monkeypatch.setattr(stages, "_timesteps", lambda gens, n, logit_normal: chosen[: len(gens)])
    seen = {}
    model.register_forward_hook(lambda m, args, output: seen.update(args=args, output=output))
    batch = collate([build_dataset("shapes:4:1", 16)[i] for i in range(4)])
    assert torch.equal(batch["image"][:, :, 0, 0], torch.ones(4, 3))  # corners are background: white = +1
    loss, metrics = stage.loss(model, model, batch, sample_seeds(0, 0, range(4)))

    x_t, t, tokens, mask = seen["args"]
    assert torch.equal(t, chosen)
    noise = (x_t.double() - torch.tensor(np.sqrt(_cosine_alpha_bars()[chosen]))[:, None, None, None]
             * batch["image"].double()) / torch.tensor(np.sqrt(1 - _cosine_alpha_bars()[chosen]))[:, None, None, None]
    assert abs(float(noise.std()) - 1) < 0.1 and abs(float(noise.mean())) < 0.1  # x_t = q_sample with N(0, 1) noise
    mse, vb = _hybrid_loss_by_hand(seen["output"].detach(), batch["image"], x_t, t)
    torch.testing.assert_close(metrics["mse"].double(), mse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["vb"][1:].double(), vb[1:], rtol=1e-4, atol=1e-6)  # KL terms: exact
    torch.testing.assert_close(metrics["vb"][0].double(), vb[0], rtol=1e-2, atol=1e-4)  # tanh-approximated CDF
    torch.testing.assert_close(loss.double(), (mse + vb).mean(), rtol=1e-2, atol=1e-4)
    if caption_dropout == 1.0:
        uncond_tokens, uncond_mask = empty_prompt_tokens(model, 4)
        assert torch.equal(tokens, uncond_tokens) and torch.equal(mask, uncond_mask)
    else:
        expected_tokens, expected_mask = model.tokenize(batch["caption"])
        assert torch.equal(tokens, expected_tokens) and torch.equal(mask, expected_mask) and mask.any()


@pytest.mark.parametrize("weighting", ["min-snr:5", "v:20"])
def test_loss_weighting_weighs_the_mse_by_the_snr_formula(weighting, monkeypatch, tmp_path):
    """--loss-weighting scales each sample's MSE (not the variance's vb term) by its formula in SNR."""
    import glide.training.stages as stages

    cfg = tiny(tmp_path, loss_weighting=weighting)
    model = create_model(preset_config("tiny-base", image_size=16, text_ctx=24), 0)
    torch.nn.init.normal_(model.out[-1].weight, std=0.05)
    stage = make_stage(cfg, model)
    chosen = torch.tensor([0, 300, 700, 999])
    monkeypatch.setattr(stages, "_timesteps", lambda gens, n, logit_normal: chosen[: len(gens)])
    batch = collate([build_dataset("shapes:4:1", 16)[i] for i in range(4)])
    loss, metrics = stage.loss(model, model, batch, sample_seeds(0, 0, range(4)))

    abar = torch.tensor(_cosine_alpha_bars()[chosen])
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(5.0)) / snr if weighting == "min-snr:5" else (1 / abar).clamp(max=20)
    if weighting == "min-snr:5":
        assert expected[0] < 1e-3 and torch.equal(expected[2:], torch.ones(2))  # only the least noisy steps lose weight
    else:
        assert abs(expected[0] - 1) < 1e-3 and expected[-1] == 20 and (expected.diff() >= 0).all()  # noisy: more
    torch.testing.assert_close(loss.double(), (expected * metrics["mse"].double() + metrics["vb"].double()).mean(),
                               rtol=1e-5, atol=1e-7)
    plain = make_stage(tiny(tmp_path), model).loss(model, model, batch, sample_seeds(0, 0, range(4)))[0]
    assert not torch.isclose(loss, plain)  # the same samples and noise, weighted differently


@pytest.mark.parametrize("value", ["snr", "eps:2", "v:0", "min-snr:-1", "v:nan", "v:1,2"])
def test_bad_loss_weighting_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="--loss-weighting must be"):
        TrainConfig(out=str(tmp_path / "run"), loss_weighting=value)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load_and_keep_two_channels_per_norm_group(path):
    """Every committed recipe is a valid TrainConfig, and its text2im U-Nets can see the image mean."""
    from glide.training.build import new_model_config
    from glide.training.config import load_yaml, merge

    cfg = merge(load_yaml(path), {"out": "unused"})
    model_config = new_model_config(cfg)
    if model_config.model_type == "text2im":
        assert model_config.num_channels // model_config.norm_groups >= 2


@pytest.mark.parametrize("preset", ["tiny-base", "tiny-upsample"])
def test_inpainting_from_a_plain_model_computes_the_same_until_trained(preset):
    """GLIDE's inpainting fine-tune starts from the plain model: the new input channels are zero."""
    from glide.training.build import inpainting_from

    plain = create_model(preset_config(preset, image_size=16, text_ctx=24), 0).eval()
    wide = inpainting_from(plain).eval()
    assert wide.config.inpaint and wide.config == plain.config.replace(inpaint=True)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 900])
    tokens, mask = plain.tokenize(["a red circle", "a blue square"])
    extra = {"low_res": torch.randn(2, 3, 4, 4, generator=g)} if plain.config.super_res else {}
    image, keep = torch.randn(2, 3, 16, 16, generator=g), (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    with torch.no_grad():
        expected = plain(x, t, tokens, mask, **extra)
        got = wide(x, t, tokens, mask, inpaint_image=image, inpaint_mask=keep, **extra)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-base", "tiny-upsample"])
def test_coordinate_channels_start_at_zero_and_then_tell_rows_apart(preset):
    """--model-overrides coord_channels=true on an --init model: the same outputs until trained;
    the two channels are each pixel's row and column, after any inpainting channels."""
    from glide.models.text2im import coordinate_maps
    from glide.training.build import inpainting_from, with_coordinates

    plain = create_model(preset_config(preset, image_size=16, text_ctx=24), 0).eval()
    located = with_coordinates(plain).eval()
    assert located.config == plain.config.replace(coord_channels=True)
    assert located.config.in_channels == plain.config.in_channels + 2
    g = torch.Generator().manual_seed(0)
    x, t = torch.zeros(1, 3, 16, 16), torch.tensor([500])
    tokens, mask = plain.tokenize(["a red circle"])
    extra = {"low_res": torch.zeros(1, 3, 4, 4)} if plain.config.super_res else {}
    with torch.no_grad():
        torch.testing.assert_close(located(x, t, tokens, mask, **extra), plain(x, t, tokens, mask, **extra))
        for p in located.parameters():  # as if trained: the zero-initialised layers, then the coordinates
            if not p.any():
                p.normal_(std=0.1, generator=g)
        blind = located(x, t, tokens, mask, **extra)
        located.input_blocks[0][0].weight[:, -2:].normal_(generator=g)
        out = located(x, t, tokens, mask, **extra)
    assert (out - blind).abs().mean() > 1e-3  # the coordinates reach the output
    assert torch.equal(located.build_input(x, **extra)[:, -2:], coordinate_maps(x))
    grid = coordinate_maps(x)
    assert grid.shape == (1, 2, 16, 16) and grid[0, 0, 0, 5] == -1 and grid[0, 0, -1, 5] == 1
    assert grid[0, 1, 5, 0] == -1 and grid[0, 1, 5, -1] == 1
    wide = inpainting_from(located)  # the inpainting channels go before the coordinates
    assert wide.config.coord_channels and wide.config.inpaint
    assert torch.equal(wide.input_blocks[0][0].weight[:, -2:], located.input_blocks[0][0].weight[:, -2:])


def test_a_base_run_gains_coordinate_channels_with_init_and_overrides(tmp_path):
    base = train(tiny(tmp_path / "base", steps=1))
    run = train(tiny(tmp_path / "located", model=None, init=str(base), tokenizer=None,
                     model_overrides={"coord_channels": True}, steps=1))
    assert load_model(run).config.coord_channels and not load_model(base).config.coord_channels


def test_inpaint_stage_fine_tunes_from_a_plain_base_run(tmp_path):
    base = train(tiny(tmp_path / "base", steps=1))
    run = train(tiny(tmp_path / "inpaint", stage="inpaint", model=None, init=str(base), tokenizer=None,
                     model_overrides={}, steps=2))
    model = load_model(run)
    assert model.config.inpaint and not model.config.super_res


# ------------------------------------------------------------------------- timestep sampling
def test_logit_normal_timestep_sampling_favours_the_middle_and_is_seeded():
    from glide.training.stages import _timesteps, generators

    seeds = list(range(4000))
    uniform = _timesteps(generators(seeds), 1000, None)
    middle = _timesteps(generators(seeds), 1000, (0.0, 1.0))
    assert torch.equal(middle, _timesteps(generators(seeds), 1000, (0.0, 1.0)))  # a pure function of the seeds
    assert 0 <= int(middle.min()) and int(middle.max()) <= 999
    inner = lambda t: float(((t >= 250) & (t < 750)).float().mean())  # noqa: E731
    assert abs(inner(uniform) - 0.5) < 0.03
    assert abs(inner(middle) - 0.73) < 0.03  # P(|N(0, 1)| < logit(0.75) = 1.0986)
    assert abs(float(middle.float().median()) - 500) < 25
    shifted = _timesteps(generators(seeds), 1000, (1.0, 1.0))
    assert float(shifted.float().median()) > 700  # sigmoid(1) = 0.73
    assert _timesteps(generators(seeds), 1000, "clean").eq(0).all()


def test_clean_timestep_sampling_trains_a_clip_on_clean_images(tmp_path):
    from glide.models import build_model, preset_config
    from glide.training.stages import generators, make_stage

    cfg = TrainConfig(out=str(tmp_path / "run"), stage="clip", model="tiny-clip", timestep_sampling="clean")
    stage = make_stage(cfg, build_model(preset_config("tiny-clip")))
    x = torch.rand(3, 3, 8, 8)
    t, _, x_t = stage.noised(x, generators([1, 2, 3]))
    assert t.eq(0).all()
    assert torch.allclose(x_t, stage.diffusion.q_sample(x, t, torch.zeros_like(x)), atol=0.05)


def test_hard_negatives_join_the_clip_loss_as_extra_texts(tmp_path):
    from glide.models import build_model, preset_config
    from glide.training.stages import make_stage

    captions = ["a small red circle above a large blue square", "a small red circle below a large blue square",
                "a large green star"]
    batch = {"image": torch.rand(3, 3, 32, 32) * 2 - 1, "caption": captions}
    model = build_model(preset_config("tiny-clip"))
    losses = {}
    for flag in (False, True):
        cfg = TrainConfig(out=str(tmp_path / f"run{flag}"), stage="clip", model="tiny-clip", hard_negatives=flag)
        loss, metrics = make_stage(cfg, model).loss(model, model, batch, [1, 2, 3])
        losses[flag] = metrics["loss"]
    # more texts to tell apart: the two-object images' losses rise; the star has no negatives of its
    # own, and the first two captions' negatives that equal the other's caption are masked for it
    assert (losses[True][:2] > losses[False][:2]).all()
    assert torch.isfinite(losses[True]).all()
    with pytest.raises(ConfigError, match="--hard-negatives trains a CLIP"):
        TrainConfig(out=str(tmp_path / "run"), stage="base", hard_negatives=True)


@pytest.mark.parametrize("value", ["beta", "logit-normal:0", "logit-normal:0,0", "logit-normal:0,nan", "uniform:1"])
def test_bad_timestep_sampling_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="--timestep-sampling must be"):
        TrainConfig(out=str(tmp_path / "run"), timestep_sampling=value)
