"""Tests of pbe_core.edit.sampling against diffusers' PNDMScheduler / DDIMScheduler (the independent oracles).

The oracle loops run in diffusers' VP space on a toy eps-model; ours run in ComfyUI's sigma space on the same
model wrapped as a k-diffusion denoiser. The toy model is non-linear and depends strongly on the integer
timestep, so evaluating at a wrong timestep (off by one) or on a wrong sample shows up far above tolerance.

Tolerances (relative: max |ours - oracle| / max |oracle|):
* float64 runs: <= 1e-10. Both sides compute the same DDIM/PLMS updates in algebraically identical but
  differently arranged forms (diffusers: PNDM paper formula (9) in VP space; ours: x + (sigma' - sigma) * eps
  in sigma space); the only differences are float64 roundings (~1e-16) amplified over <= 51 model calls.
  diffusers builds its alpha table in float32, so for these runs its table is upcast to float64 (values
  unchanged) and ours is built from the very same values. Measured: <= 1.3e-15.
* float32 runs (stock diffusers, untouched): <= 1e-5, float32 rounding (~6e-8) accumulated over the run.
  Measured: <= 7e-7.
"""

from __future__ import annotations

import math

import pytest
import torch

from pbe_core.edit.sampling import (
    official_sigmas,
    official_timesteps,
    sample_ddim,
    sample_plms,
    scaled_linear_alphas_cumprod,
    timestep_to_sigma,
)

diffusers = pytest.importorskip("diffusers")

CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
)
SHAPE = (2, 4, 6, 6)
STEP_COUNTS = [1, 2, 3, 4, 5, 10, 50]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_eps_model(dtype: torch.dtype, seed: int = 0):
    """Deterministic, non-linear, strongly t-dependent toy eps(x_vp, t) on (B, C, H, W) latents."""
    g = torch.Generator().manual_seed(seed)
    dim = math.prod(SHAPE[1:])
    w = (torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)).to(dtype)
    v = torch.randn(dim, generator=g, dtype=torch.float64).to(dtype)

    def eps(x_vp: torch.Tensor, t: int) -> torch.Tensor:
        flat = x_vp.reshape(x_vp.shape[0], -1)
        out = torch.tanh(flat @ w * (1.0 + t / 1000.0) + math.sin(0.37 * t) * v) + 0.1 * flat
        return out.reshape(x_vp.shape)

    return eps


def make_denoiser(eps, alphas_cumprod, calls: list):
    """Wrap eps(x_vp, t) as a k-diffusion denoiser: t from sigma by log-table lookup (exact values required)."""
    log_table = timestep_to_sigma(range(len(alphas_cumprod)), alphas_cumprod).log()

    def model(x: torch.Tensor, sigma: torch.Tensor, **extra):
        assert sigma.shape == (x.shape[0],)
        assert torch.all(sigma == sigma[0])
        s = float(sigma[0])
        dist = (math.log(s) - log_table).abs()
        t = int(dist.argmin())
        exact = 1e-12 if x.dtype == torch.float64 else 1e-6
        assert float(dist[t]) < exact, f"sigma {s} is not a table value"
        x_vp = x / math.sqrt(1.0 + s * s)
        calls.append((t, x_vp.clone(), extra))
        return x - s * eps(x_vp, t)

    return model


def noise(dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype)


def run_diffusers(scheduler_cls, steps: int, dtype: torch.dtype, **config):
    """Oracle: diffusers' scheduler loop in VP space from x_T = noise; returns (x_0, [(t, x_vp), ...], table)."""
    sched = scheduler_cls(**{**CONFIG, **config})
    if dtype == torch.float64:  # same values, float64 arithmetic
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    sched.set_timesteps(steps)
    assert sched.init_noise_sigma == 1.0
    eps = make_eps_model(dtype)
    x = noise(dtype) * sched.init_noise_sigma
    calls = []
    for t in sched.timesteps:
        calls.append((int(t), x.clone()))
        x = sched.step(eps(x, int(t)), t, x).prev_sample
    return x, calls, sched.alphas_cumprod


def run_ours(sampler, steps: int, dtype: torch.dtype, alphas_cumprod, sigmas=None, callback=None):
    """Ours in sigma space from x = noise * sqrt(1 + sigma_0^2); returns (VP result, calls)."""
    if sigmas is None:
        sigmas = official_sigmas(steps, alphas_cumprod=alphas_cumprod)
    calls = []
    model = make_denoiser(make_eps_model(dtype), alphas_cumprod, calls)
    x = noise(dtype) * math.sqrt(1.0 + float(sigmas[0]) ** 2)
    out = sampler(model, x, sigmas, extra_args={"seed": 7}, callback=callback)
    return out, calls


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --- schedule ------------------------------------------------------------------------------------------------------


def test_official_timesteps():
    assert official_timesteps(50) == list(range(981, 0, -20))
    assert official_timesteps(50)[0] == 981 and official_timesteps(50)[-1] == 1
    assert official_timesteps(10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert official_timesteps(1) == [1]
    assert official_timesteps(3) == [667, 334, 1]
    assert official_timesteps(999) == list(range(999, 0, -1))


def test_official_timesteps_match_diffusers_leading_spacing():
    sched = diffusers.DDIMScheduler(**CONFIG)
    for steps in [1, 3, 7, 30, 50, 999]:
        sched.set_timesteps(steps)
        assert official_timesteps(steps) == sched.timesteps.tolist()


@pytest.mark.parametrize("bad", [0, -3, 1000, 1001])
def test_official_timesteps_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=f"steps={bad}|got {bad}"):
        official_timesteps(bad)


@pytest.mark.parametrize("bad", [1.5, True, "50"])
def test_official_timesteps_rejects_non_int(bad):
    with pytest.raises(TypeError, match="steps must be an int"):
        official_timesteps(bad)


def test_alphas_cumprod_match_diffusers():
    ours = scaled_linear_alphas_cumprod()
    theirs = diffusers.PNDMScheduler(**CONFIG).alphas_cumprod.double()  # built in float32 by diffusers
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    assert rel_diff(ours, theirs) < 1e-5
    assert scaled_linear_alphas_cumprod(dtype=torch.float32).dtype == torch.float32


def test_official_sigmas_end_at_timestep_zero_not_at_zero():
    ac = scaled_linear_alphas_cumprod()
    sigmas = official_sigmas(50)
    assert sigmas.shape == (51,) and sigmas.dtype == torch.float64
    expected = [math.sqrt((1 - float(ac[t])) / float(ac[t])) for t in [*official_timesteps(50), 0]]
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)
    assert sigmas[-1] == pytest.approx(0.029168, rel=1e-4)
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_official_sigmas_denoise_follows_host_convention():
    full = official_sigmas(10)
    torch.testing.assert_close(official_sigmas(10, denoise=0.9999999), full, rtol=0, atol=0)
    torch.testing.assert_close(official_sigmas(10, denoise=0.5), official_sigmas(20)[-11:], rtol=0, atol=0)
    # int(10 / 0.6) == 16, as the host's KSampler.set_steps truncates
    torch.testing.assert_close(official_sigmas(10, denoise=0.6), official_sigmas(16)[-11:], rtol=0, atol=0)
    assert official_sigmas(10, denoise=0.5).shape == (11,)
    for bad in [0.0, -0.5, 1.5, float("nan")]:
        with pytest.raises(ValueError, match="denoise"):
            official_sigmas(10, denoise=bad)
    with pytest.raises(ValueError, match="denoise"):
        official_sigmas(50, denoise=0.01)  # would need 5000 steps


# --- PLMS parity with diffusers' PNDMScheduler -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_plms_matches_diffusers_pndm(steps, dtype):
    ref, ref_calls, ac = run_diffusers(diffusers.PNDMScheduler, steps, dtype, skip_prk_steps=True)
    out, calls = run_ours(sample_plms, steps, dtype, ac)
    assert out.dtype == dtype and out.shape == SHAPE
    assert rel_diff(out, ref) <= TOL[dtype]
    # Same evaluations in the same order: diffusers' timestep list is t_0, t_1, t_1, t_2, ... (the repeated t_1 is
    # the 2nd-order start's corrector at the predicted sample, then the real sample), i.e. steps + 1 model calls
    # for steps >= 2 and a single DDIM call for 1 step. Compare the timesteps exactly and the VP inputs closely.
    assert [t for t, *_ in calls] == [t for t, _ in ref_calls]
    assert len(calls) == (steps + 1 if steps > 1 else 1)
    for (_, x_ours, extra), (_, x_ref) in zip(calls, ref_calls, strict=True):
        assert extra == {"seed": 7}
        assert rel_diff(x_ours, x_ref) <= TOL[dtype]


def test_plms_call_sequence_for_10_steps():
    _, ref_calls, ac = run_diffusers(diffusers.PNDMScheduler, 10, torch.float64, skip_prk_steps=True)
    _, calls = run_ours(sample_plms, 10, torch.float64, ac)
    expected = [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert [t for t, _ in ref_calls] == expected
    assert [t for t, *_ in calls] == expected


def test_last_step_to_alpha_one_is_detected():
    """Ending at sigma 0 (alpha 1) instead of sigma(0) = sqrt((1 - a_0) / a_0) is far outside tolerance."""
    steps = 10
    ref, _, ac = run_diffusers(diffusers.PNDMScheduler, steps, torch.float64, skip_prk_steps=True)
    sigmas = official_sigmas(steps, alphas_cumprod=ac)
    wrong = sigmas.clone()
    wrong[-1] = 0.0
    out_wrong, _ = run_ours(sample_plms, steps, torch.float64, ac, sigmas=wrong)
    out_right, _ = run_ours(sample_plms, steps, torch.float64, ac, sigmas=sigmas)
    assert rel_diff(out_right, ref) <= 1e-10
    assert rel_diff(out_wrong, ref) > 1e-3  # measured 2.5e-3: 7 orders of magnitude above the tolerance
    # ... and that wrong list is exactly diffusers' set_alpha_to_one=True variant (the sigma-0 branch returns x).
    ref_one, _, _ = run_diffusers(
        diffusers.PNDMScheduler, steps, torch.float64, skip_prk_steps=True, set_alpha_to_one=True
    )
    assert rel_diff(out_wrong, ref_one) <= 1e-10


def test_off_by_one_timestep_is_detected():
    """The toy model really pins the timesteps: shifting every sigma by one table entry breaks parity."""
    ref, _, ac = run_diffusers(diffusers.PNDMScheduler, 10, torch.float64, skip_prk_steps=True)
    shifted = timestep_to_sigma([t + 1 for t in official_timesteps(10)] + [1], ac)
    out, _ = run_ours(sample_plms, 10, torch.float64, ac, sigmas=shifted)
    assert rel_diff(out, ref) > 1e-3


@pytest.mark.parametrize("sampler", [sample_plms, sample_ddim])
def test_callback_once_per_step(sampler):
    steps = 7
    sigmas = official_sigmas(steps)
    seen = []
    run_ours(sampler, steps, torch.float64, scaled_linear_alphas_cumprod(), sigmas=sigmas, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(steps))
    for d in seen:
        assert set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(d["sigma"]) == float(sigmas[d["i"]]) == float(d["sigma_hat"])
        assert d["x"].shape == SHAPE and d["denoised"].shape == SHAPE


def test_plms_accepts_host_style_sigmas_ending_at_zero():
    """Any decreasing list works, including a host scheduler's that ends at 0 (then x itself is returned)."""
    sigmas = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float32)
    calls = []

    def model(x, sigma, **extra):
        calls.append(float(sigma[0]))
        return torch.tanh(x / (1 + sigma[0] ** 2) ** 0.5)

    x = noise(torch.float32) * 14.6
    out = sample_plms(model, x, sigmas)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert len(calls) == len(sigmas)  # 6 steps + the start's corrector
    assert calls[:3] == [pytest.approx(14.6), pytest.approx(6.0), pytest.approx(6.0)]
    with pytest.raises(ValueError, match="only the final entry may be 0"):
        sample_plms(model, x, torch.tensor([14.6, 0.0, 0.0]))


# --- DDIM ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 5, 50])
def test_ddim_step_identity_matches_diffusers_ddim(steps):
    """x + (sigma' - sigma) * eps in sigma space == diffusers' DDIM (eta 0) step in VP space."""
    ref, ref_calls, ac = run_diffusers(diffusers.DDIMScheduler, steps, torch.float64, clip_sample=False)
    out, calls = run_ours(sample_ddim, steps, torch.float64, ac)
    assert rel_diff(out, ref) <= 1e-10
    assert [t for t, *_ in calls] == [t for t, _ in ref_calls] == official_timesteps(steps)
