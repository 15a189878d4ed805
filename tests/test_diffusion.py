"""The diffusion math: schedules, respacing and tables against the reference, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glide.diffusion import (
    GaussianDiffusion,
    get_named_beta_schedule,
    normal_kl,
    space_timesteps,
    step_count,
)

from .helpers import load_fixture, load_json

# ---------------------------------------------------------------------------------------------
# Reference tables


def test_respacing_strings_match_reference():
    data = load_json("diffusion.json")
    for spec, expected in data["respacing"].items():
        assert sorted(space_timesteps(1000, spec)) == expected, spec


def test_respacing_accepts_lists():
    assert space_timesteps(1000, [10, 10, 3, 2, 2]) == space_timesteps(1000, "10,10,3,2,2")
    assert space_timesteps(1000, "fast27") != space_timesteps(1000, "10,10,3,2,2")
    assert len(space_timesteps(1000, "fast27")) == 27


@pytest.mark.parametrize(("steps", "count"), [(25, 25), ("25", 25), ("trailing10", 10), ("logsnr7", 7),
                                              ("karras12", 12), ("ddim50", 50), ("fast27", 27), ("10,10,3", 23)])
def test_step_count_is_the_number_of_steps_sampled(steps, count):
    assert step_count(steps) == count == len(space_timesteps(1000, str(steps)))


@pytest.mark.parametrize("steps", [0, 1001, "trailing0", "sideways10", "", True, 2.5])
def test_step_count_refuses_what_is_not_a_step_spec(steps):
    with pytest.raises(ValueError, match="steps|respacing|section"):
        step_count(steps)


def _log_sigma(schedule: str, steps) -> np.ndarray:
    abar = np.cumprod(1 - get_named_beta_schedule(schedule, 1000))[sorted(steps, reverse=True)]
    return 0.5 * (np.log1p(-abar) - np.log(abar))


def test_trailing_spacing_starts_at_the_noisiest_step():
    assert sorted(space_timesteps(1000, "trailing10"), reverse=True) == list(range(999, 0, -100))
    assert space_timesteps(10, "trailing10") == set(range(10))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("count", [1, 2, 5, 10, 25, 1000])
@pytest.mark.parametrize("kind", ["trailing", "logsnr", "karras"])
def test_noise_spacings_take_exactly_the_steps_asked(kind, count, schedule):
    kept = space_timesteps(1000, f"{kind}{count}", schedule)
    assert len(kept) == count and min(kept) >= 0 and max(kept) <= 999
    if kind != "trailing" and count > 1:
        assert 0 in kept


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_logsnr_spacing_is_even_in_log_snr_from_sigma_max(schedule):
    log_sigma = _log_sigma(schedule, space_timesteps(1000, "logsnr10", schedule))
    # starts where sigma = 80 (not at the cosine schedule's sigma ~ 2e4), ends at the cleanest step
    assert abs(math.exp(log_sigma[0]) - 80) < 8
    gaps = -np.diff(log_sigma)
    assert (gaps > 0).all() and gaps.max() / gaps.min() < 1.5, gaps  # even, up to integer steps


def test_karras_spacing_packs_steps_towards_the_clean_end():
    sigma = np.exp(_log_sigma("linear", space_timesteps(1000, "karras10", "linear")))
    assert abs(sigma[0] - 80) < 8
    gaps = np.diff(sigma ** (1 / 7))  # even in sigma^(1/rho)
    assert (gaps < 0).all() and gaps.min() / gaps.max() < 1.2, gaps
    # the schedule decides where: the same count lands on other steps for the cosine schedule
    assert space_timesteps(1000, "karras10", "linear") != space_timesteps(1000, "karras10")


def test_from_schedule_uses_its_schedule_for_noise_spacings():
    for schedule in ("linear", "squaredcos_cap_v2"):
        diffusion = GaussianDiffusion.from_schedule(schedule, 1000, "logsnr8")
        assert diffusion.timestep_map.tolist() == sorted(space_timesteps(1000, "logsnr8", schedule))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_beta_schedules_match_reference_exactly(schedule):
    betas = get_named_beta_schedule(schedule, 1000)
    assert betas.dtype == np.float64
    assert np.array_equal(betas, np.array(load_json("diffusion.json")[f"{schedule}/betas_1000"]))
    assert np.array_equal(betas, load_fixture("diffusion.pt")[f"{schedule}/betas_1000"].numpy())


# Reference tables glide does not keep: alphas_cumprod_next serves only the reverse DDIM
# (image -> noise) loop, which glide does not implement.
NOT_KEPT = {"alphas_cumprod_next"}


def test_every_diffusion_table_matches_reference_exactly():
    tables = load_fixture("diffusion.pt")
    checked = 0
    for key, expected in tables.items():
        schedule, rest = key.split("/", 1)
        if rest == "betas_1000":
            continue
        spaced, name = rest.split("/")
        if name in NOT_KEPT:
            assert not hasattr(GaussianDiffusion.from_schedule(schedule, 1000, "4"), name)
            continue
        diffusion = GaussianDiffusion.from_schedule(schedule, 1000, spaced[len("respaced_") :])
        assert expected.dtype == torch.float64
        actual = getattr(diffusion, name)
        assert actual.dtype == np.float64
        assert np.array_equal(actual, expected.numpy()), key
        checked += 1
    assert checked > 100


def test_from_schedule_timestep_map():
    diffusion = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000, "4")
    assert diffusion.num_timesteps == 4
    assert diffusion.timestep_map.dtype == torch.long
    assert diffusion.timestep_map.tolist() == [0, 333, 666, 999]
    full = GaussianDiffusion.from_schedule("linear", 1000)
    assert full.num_timesteps == 1000
    assert torch.equal(full.timestep_map, torch.arange(1000))
    assert GaussianDiffusion(np.full(5, 0.1)).timestep_map.tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear.*squaredcos_cap_v2"):
        get_named_beta_schedule("cosine", 1000)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1001", "cannot take 1001 steps"),
        ("ddim600", "integer stride"),
        ("ddimx", "invalid respacing"),
        ("abc", "invalid respacing"),
        ("10,,3", "invalid respacing"),
        ("0", ">= 1"),
        ("300,300,300,300", "cannot take 300 steps"),
        ("logsnr1001", "cannot take 1001 steps"),
        ("karras0", "cannot take 0 steps"),
        ("trailing5,5", "one count"),
        ("logsnrx", "invalid respacing"),
    ],
)
def test_bad_respacing_raises(spec, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, spec)


def test_bad_betas_and_map_raise():
    with pytest.raises(ValueError):
        GaussianDiffusion(np.array([0.1, 0.0]))
    with pytest.raises(ValueError):
        GaussianDiffusion(np.full(3, 0.1), timestep_map=[0, 2])
    with pytest.raises(ValueError):
        GaussianDiffusion(np.full(3, 0.1), timestep_map=[0, 5, 2])


# ---------------------------------------------------------------------------------------------
# Forward process and posterior


def test_extract_dtype_and_shape():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "10")
    t = torch.tensor([0, 9])
    for dtype, expected in [
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.float64, torch.float64),
    ]:
        coef = diffusion.extract("alphas_cumprod", t, torch.zeros(2, 3, 4, 4, dtype=dtype))
        assert coef.shape == (2, 1, 1, 1) and coef.dtype == expected
    coef = diffusion.extract("alphas_cumprod", t, torch.zeros(2, 3, dtype=torch.float64))
    assert coef.flatten().tolist() == [diffusion.alphas_cumprod[0], diffusion.alphas_cumprod[9]]
    assert torch.equal(
        diffusion.extract("betas", 3, torch.zeros(2, 1)), diffusion.extract("betas", t * 0 + 3, torch.zeros(2, 1))
    )


def test_q_sample_statistics():
    diffusion = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000, "10")
    gen = torch.Generator().manual_seed(0)
    x_start = torch.full((2, 1, 200, 200), 0.5, dtype=torch.float64)
    x_start[1] = -0.8
    t = torch.tensor([3, 7])
    noise = torch.randn(x_start.shape, generator=gen, dtype=torch.float64)
    x_t = diffusion.q_sample(x_start, t, noise)
    for b in range(2):
        abar = diffusion.alphas_cumprod[t[b]]
        mean, std = x_t[b].mean().item(), x_t[b].std().item()
        assert abs(mean - math.sqrt(abar) * x_start[b, 0, 0, 0].item()) < 4 * math.sqrt(1 - abar) / 200
        assert abs(std - math.sqrt(1 - abar)) < 0.01 * math.sqrt(1 - abar)
    mean, var, log_var = diffusion.q_mean_variance(x_start, t)
    torch.testing.assert_close(torch.log(var), log_var)
    expected = torch.from_numpy(diffusion.sqrt_alphas_cumprod[[3, 7]]) * torch.tensor([0.5, -0.8], dtype=torch.float64)
    torch.testing.assert_close(mean[:, 0, 0, 0], expected)


def test_posterior_matches_direct_bayes():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), in closed form, respaced."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "25")
    x_start = torch.randn(25, 3, dtype=torch.float64)
    x_t = torch.randn(25, 3, dtype=torch.float64)
    t = torch.arange(25)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    abar = torch.from_numpy(diffusion.alphas_cumprod)[:, None]
    abar_prev = torch.from_numpy(diffusion.alphas_cumprod_prev)[:, None]
    alpha = abar / abar_prev
    beta = 1 - alpha
    precision = alpha / beta + 1 / (1 - abar_prev)
    direct_mean = (alpha.sqrt() * x_t / beta + abar_prev.sqrt() * x_start / (1 - abar_prev)) / precision
    torch.testing.assert_close(mean[1:], direct_mean[1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(variance[1:], (1 / precision).expand(-1, 3)[1:], rtol=1e-10, atol=0)
    # At t = 0 the posterior is the point x_0; its clipped log-variance reuses the t = 1 value.
    torch.testing.assert_close(mean[0], x_start[0])
    assert variance[0].abs().max() == 0
    torch.testing.assert_close(log_variance[0], log_variance[1])


def test_xstart_eps_round_trip():
    diffusion = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000, "50")
    x_start = torch.rand(4, 3, 5, 5, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x_start)
    t = torch.tensor([0, 10, 30, 49])
    x_t = diffusion.q_sample(x_start, t, noise)
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(x_t, t, noise), x_start)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t, t, x_start), noise)


def test_p_mean_variance_variance_range_and_fixed_variance():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "10")
    x = torch.randn(3, 3, 4, 4)
    eps = torch.randn_like(x)
    t = torch.tensor([0, 4, 9])
    low = diffusion.p_mean_variance(torch.cat([eps, -torch.ones_like(x)], 1), x, t)
    high = diffusion.p_mean_variance(torch.cat([eps, torch.ones_like(x)], 1), x, t)
    fixed = diffusion.p_mean_variance(eps, x, t)
    torch.testing.assert_close(
        low["log_variance"], diffusion.extract("posterior_log_variance_clipped", t, x).expand_as(x)
    )
    torch.testing.assert_close(high["log_variance"], diffusion.extract("log_betas", t, x).expand_as(x))
    torch.testing.assert_close(fixed["log_variance"], low["log_variance"])
    torch.testing.assert_close(fixed["variance"][1:], low["variance"][1:])
    assert torch.equal(fixed["mean"], low["mean"]) and torch.equal(low["eps"], eps)
    assert low["pred_xstart"].abs().max() <= 1
    with pytest.raises(ValueError, match="channels"):
        diffusion.p_mean_variance(torch.zeros(3, 4, 4, 4), x, t)


def test_denoised_fn_applies_before_clamp():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "10")
    x = torch.randn(2, 3, 4, 4)
    out = diffusion.p_mean_variance(torch.randn(2, 6, 4, 4), x, 5, denoised_fn=lambda x0: x0 * 0 + 3.0)
    assert torch.all(out["pred_xstart"] == 1.0)


def test_condition_mean_and_score_use_original_timesteps():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "4")
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([1, 3])
    out = diffusion.p_mean_variance(torch.randn(2, 6, 4, 4), x, t, clip_denoised=False)
    seen = []

    def cond_fn(x_in, t_in):
        seen.append(t_in.tolist())
        return torch.ones_like(x_in)

    mean = diffusion.condition_mean(cond_fn, out, x, t)
    torch.testing.assert_close(mean, out["mean"] + out["variance"])
    scored = diffusion.condition_score(cond_fn, out, x, t)
    abar = diffusion.extract("alphas_cumprod", t, x)
    torch.testing.assert_close(
        scored["pred_xstart"],
        out["pred_xstart"] + (1 - abar).sqrt() * diffusion.extract("sqrt_recipm1_alphas_cumprod", t, x),
    )
    assert seen == [[333, 999], [333, 999]]
    assert out["mean"] is not scored["mean"]


# ---------------------------------------------------------------------------------------------
# Training loss


def _direct_vb_bits(diffusion, model_output, x_start, x_t, t):
    """The KL term written out in float64 without the library's helpers."""
    n = x_t.shape[0]
    eps, v = model_output[:, :3].double(), model_output[:, 3:].double()
    x_start, x_t = x_start.double(), x_t.double()
    result = []
    for b in range(n):
        i = int(t[b])
        abar, abar_prev = diffusion.alphas_cumprod[i], diffusion.alphas_cumprod_prev[i]
        beta = diffusion.betas[i]
        x0 = (x_t[b] - math.sqrt(1 - abar) * eps[b]) / math.sqrt(abar)
        coef1 = beta * math.sqrt(abar_prev) / (1 - abar)
        coef2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
        model_mean = coef1 * x0 + coef2 * x_t[b]
        true_mean = coef1 * x_start[b] + coef2 * x_t[b]
        true_logvar = diffusion.posterior_log_variance_clipped[i]
        frac = (v[b] + 1) / 2
        model_logvar = frac * math.log(beta) + (1 - frac) * true_logvar
        kl = 0.5 * (
            -1
            + model_logvar
            - true_logvar
            + torch.exp(true_logvar - model_logvar)
            + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar)
        )
        result.append(kl.mean() / math.log(2))
    return torch.stack(result)


def test_vb_term_matches_direct_kl():
    diffusion = GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000, "50")
    gen = torch.Generator().manual_seed(1)
    x_start = torch.rand(4, 3, 6, 6, generator=gen) * 2 - 1
    noise = torch.randn(x_start.shape, generator=gen)
    t = torch.tensor([5, 17, 30, 49])
    x_t = diffusion.q_sample(x_start, t, noise)
    model_output = torch.cat(
        [noise + 0.3 * torch.randn(x_start.shape, generator=gen), torch.rand(4, 3, 6, 6, generator=gen) * 2 - 1], 1
    )
    losses = diffusion.hybrid_losses(model_output, x_start, x_t, t, noise)
    expected_vb = _direct_vb_bits(diffusion, model_output, x_start, x_t, t) * (50 / 1000)
    torch.testing.assert_close(losses["vb"].double(), expected_vb, rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(losses["mse"], ((noise - model_output[:, :3]) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert losses["loss"].shape == (4,)


def test_vb_at_t0_is_decoder_nll():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    x_start = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous()
    noise = torch.zeros_like(x_start)
    t = torch.tensor([0])
    x_t = diffusion.q_sample(x_start, t, noise)
    output = torch.cat([noise, torch.zeros_like(x_start)], 1)
    vb = diffusion.hybrid_losses(output, x_start, x_t, t, noise)["vb"]
    out = diffusion.p_mean_variance(output, x_t, t, clip_denoised=False)
    std = torch.exp(0.5 * out["log_variance"]).double()
    normal = torch.distributions.Normal(out["mean"].double(), std)
    upper = torch.where(x_start < 0.999, normal.cdf(x_start.double() + 1 / 255), torch.ones_like(std))
    lower = torch.where(x_start > -0.999, normal.cdf(x_start.double() - 1 / 255), torch.zeros_like(std))
    nll_bits = -torch.log(upper - lower).mean() / math.log(2)
    assert abs(vb.item() - nll_bits.item()) < 1e-2 * nll_bits.item() + 1e-4


def test_vb_trains_only_the_variance_channels():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    x_start = torch.rand(3, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x_start)
    t = torch.tensor([0, 400, 999])
    x_t = diffusion.q_sample(x_start, t, noise)
    output = torch.randn(3, 6, 4, 4, requires_grad=True)
    losses = diffusion.hybrid_losses(output, x_start, x_t, t, noise)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), output, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0 and grad_vb[:, 3:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), output)
    assert grad_mse[:, 3:].abs().max() == 0 and grad_mse[:, :3].abs().max() > 0


def test_training_losses_with_model_fn():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, "100")
    x_start = torch.rand(2, 3, 4, 4) * 2 - 1
    t = torch.tensor([3, 99])
    seen = []

    def model_fn(x_t, timesteps):
        seen.append(timesteps.tolist())
        return torch.cat([torch.zeros_like(x_t), torch.zeros_like(x_t)], 1)

    with torch.random.fork_rng():
        torch.manual_seed(3)
        losses = diffusion.training_losses(model_fn, x_start, t)
    assert seen == [[30, 999]]
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(3))
    expected = diffusion.hybrid_losses(
        model_fn(diffusion.q_sample(x_start, t, noise), t), x_start, diffusion.q_sample(x_start, t, noise), t, noise
    )
    torch.testing.assert_close(losses["loss"], expected["loss"])
    eps_only = diffusion.training_losses(lambda x, _: torch.zeros_like(x), x_start, t, noise)
    assert torch.equal(eps_only["vb"], torch.zeros(2)) and torch.equal(eps_only["loss"], eps_only["mse"])


def test_normal_kl_zero_for_equal_gaussians():
    m, lv = torch.randn(5), torch.randn(5)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-6


def test_one_step_process_from_nearly_clean_data_stays_finite():
    """An image-to-image start one step from clean (e.g. --upsample-steps 4 at strength 0.3) is a
    one-step process at t = 0; its learned-range variance must not take log(0)."""
    full = GaussianDiffusion.from_schedule("linear", 1000, "4")
    one = GaussianDiffusion(full.betas[:1], full.timestep_map[:1].tolist())
    x = torch.randn(1, 3, 4, 4)
    out = one.p_mean_variance(torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1), x, 0)
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))
