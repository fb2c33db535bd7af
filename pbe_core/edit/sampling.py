"""Paint by Example's official inference sampler (PLMS, eta 0) as pure functions in ComfyUI's sigma space.

Paint by Example (Yang et al., CVPR 2023) samples with PLMS -- the pseudo linear multistep method of
Liu et al., "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR 2022), as used by latent
diffusion -- with eta 0 and 50 uniformly spaced timesteps. This module reproduces that sampler for an
eps-prediction model wrapped the way ComfyUI (k-diffusion convention) wraps it.

Conventions
-----------
* Schedule: DDPM betas ``linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2`` ("linear" in LDM,
  "scaled_linear" in diffusers), ``alphas_cumprod = cumprod(1 - betas)``.
* Sigma space: ``sigma_t = sqrt((1 - a_t) / a_t)`` and ``x_sigma = x_vp / sqrt(a_t) = x0 + sigma * eps``,
  so ``x_vp = x_sigma / sqrt(1 + sigma ** 2)``. The model is called as
  ``denoised = model(x, sigma * s_in, **extra_args)`` (x0-prediction) and ``eps = (x - denoised) / sigma``.
* DDIM step (eta 0) from sigma to sigma_next is exactly ``x + (sigma_next - sigma) * eps``: algebraically the
  same as the VP update ``sqrt(a') * x0 + sqrt(1 - a') * eps`` divided by ``sqrt(a')``.
* Timesteps: ``1000 // steps`` apart with offset 1 (981, 961, ..., 1 for 50 steps). The last step goes to
  the noise level of timestep 0 (``alphas_cumprod[0]``, sigma ~ 0.0292), not to a clean sample (alpha 1).

Host contract (``comfy.samplers.KSAMPLER(sample_plms)``)
--------------------------------------------------------
The samplers have k-diffusion's signature ``fn(model, x, sigmas, extra_args=None, callback=None,
disable=None)`` and call ``callback`` once per step. The host hands them ``x`` already noised in sigma space
(``noise * sqrt(1 + sigmas[0] ** 2)`` when it counts the run as a full denoise, i.e. when ``sigmas[0]`` is the
model's ``sigma_max``; otherwise ``latent + noise * sigmas[0]``). The host decodes whatever the function returns
without un-scaling it for eps models, while Paint by Example's reference decodes the VP latent; so these
functions **return the VP latent** ``x / sqrt(1 + sigmas[-1] ** 2)`` when ``sigmas[-1] > 0`` (and ``x``
itself when the list ends at 0).

The host's model wrapper maps sigma to a timestep through its log-sigma table, so sigmas that are exactly
table values (as :func:`official_sigmas` produces) are evaluated at exact integer timesteps.

Provenance: written for this project from the papers above. diffusers' ``PNDMScheduler`` (Apache-2.0) was
read for ideas only -- which sample/timestep pairs its ``skip_prk_steps`` mode evaluates and where it
averages -- and serves as the independent oracle of ``tests/pbe_core/edit/test_sampling.py``; no code was taken from it
or from the official Paint-by-Example repository.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "official_sigmas",
    "official_timesteps",
    "sample_ddim",
    "sample_plms",
    "scaled_linear_alphas_cumprod",
    "timestep_to_sigma",
]

#: Adams-Bashforth weights (newest eps first) for 2, 3 and 4 stored eps values, as PLMS uses them.
_AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """DDPM alpha-bar (Ho et al. 2020) for LDM's "linear" (diffusers' "scaled_linear") beta schedule."""
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(
            f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}; "
            "Paint by Example was trained with 1000"
        )
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}; "
            "Paint by Example uses 0.00085 and 0.012"
        )
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def official_timesteps(steps: int, num_train_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """Uniform ("leading") DDIM/PLMS timesteps with offset (LDM, Rombach et al. 2022), in descending order."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {steps!r} ({type(steps).__name__}); pass e.g. steps=50")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}; use 1000")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}; Paint by Example uses 1")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be between 1 and {num_train_timesteps}, got {steps}; "
            f"pick a step count in 1..{num_train_timesteps} (Paint by Example uses 50)"
        )
    stride = num_train_timesteps // steps
    timesteps = [offset + k * stride for k in range(steps)]
    if timesteps[-1] > num_train_timesteps - 1:
        raise ValueError(
            f"steps={steps} with offset {offset} would reach timestep {timesteps[-1]}, but the model only has "
            f"timesteps 0..{num_train_timesteps - 1}; "
            + (f"use at most {num_train_timesteps - offset} steps" if stride == 1 else "lower steps or offset")
        )
    return timesteps[::-1]


def _as_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """Alpha-bar table as a float64 CPU tensor (the default Paint-by-Example schedule when None)."""
    if alphas_cumprod is None:
        return scaled_linear_alphas_cumprod()
    ac = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float64).flatten()
    if ac.numel() < 1 or not bool(((ac > 0) & (ac < 1)).all()):
        raise ValueError("alphas_cumprod must be a non-empty 1-D table with every value in (0, 1)")
    return ac


def timestep_to_sigma(timesteps, alphas_cumprod=None) -> torch.Tensor:
    """Sigma of integer DDPM timesteps, sqrt((1 - a_t) / a_t) (Karras et al. 2022, VP in sigma form)."""
    ac = _as_alphas_cumprod(alphas_cumprod)
    a = ac[torch.as_tensor(timesteps, dtype=torch.long)]
    return ((1.0 - a) / a).sqrt()


def official_sigmas(steps: int, alphas_cumprod=None, denoise: float = 1.0) -> torch.Tensor:
    """Sigmas the official PLMS/DDIM sampler walks: sigma(t_0), ..., sigma(t_last), sigma(0) (float64).

    The last entry is the noise level of timestep 0 (the official "previous alpha" of the last step is
    ``alphas_cumprod[0]``, not 1), so the list never ends at 0 and has ``steps + 1`` entries.

    ``denoise < 1`` follows the host's img2img convention (ComfyUI ``KSampler.set_steps``): build the schedule
    for ``int(steps / denoise)`` steps and keep its last ``steps + 1`` sigmas. ``denoise > 0.9999`` counts as 1.
    """
    ac = _as_alphas_cumprod(alphas_cumprod)
    if not isinstance(denoise, (int, float)) or isinstance(denoise, bool) or not math.isfinite(denoise):
        raise ValueError(f"denoise must be a finite number in (0, 1], got {denoise!r}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}; use 1.0 for a full inpaint")
    total = steps
    if denoise <= 0.9999:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int, got {steps!r} ({type(steps).__name__}); pass e.g. steps=50")
        total = int(steps / denoise)
        if total > ac.numel() - 1:
            raise ValueError(
                f"steps={steps} at denoise={denoise} needs a {total}-step schedule, more than the model's "
                f"{ac.numel()} timesteps allow; raise denoise or lower steps"
            )
    timesteps = official_timesteps(total, num_train_timesteps=ac.numel())
    sigmas = timestep_to_sigma([*timesteps, 0], ac)
    return sigmas[-(steps + 1) :]


def _check_sigmas(x: torch.Tensor, sigmas: torch.Tensor) -> None:
    """Reject sigma lists a sampler step cannot use (every sigma but the last must be > 0)."""
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if sigmas.numel() > 1 and not bool((sigmas[:-1] > 0).all()):
        raise ValueError(
            "every sigma but the last must be > 0 (eps = (x - denoised) / sigma); got "
            f"{sigmas.tolist()}; only the final entry may be 0"
        )
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension")


def _to_vp(x: torch.Tensor, sigma_last: float) -> torch.Tensor:
    """VP latent of a sigma-space sample, x / sqrt(1 + sigma^2) (identity at sigma 0)."""
    return x / math.sqrt(1.0 + sigma_last * sigma_last) if sigma_last > 0 else x


def _ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """DDIM eta-0 step (Song et al. 2021) in sigma space: x + (sigma_next - sigma) * eps."""
    return x + (sigma_next - sigma) * eps


def _plms_eps(eps: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """PLMS (Liu et al. 2022) linear-multistep eps: Adams-Bashforth of order len(history) + 1 (at most 4)."""
    terms = [eps, *reversed(history[-3:])]
    weights = _AB_WEIGHTS[len(terms)]
    out = weights[0] * terms[0]
    for w, e in zip(weights[1:], terms[1:], strict=True):
        out = out + w * e
    return out


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """PLMS sampler (Liu et al. 2022, eta 0) as Paint by Example runs it, in k-diffusion/ComfyUI sigma space.

    Step 0 is a 2nd-order (Heun-like) start: eps1 at (x, sigma_0); x' = DDIM step to sigma_1 with eps1; eps2 at
    (x', sigma_1); step from x with (eps1 + eps2) / 2. Every later step evaluates eps once at (x_i, sigma_i)
    and steps with Adams-Bashforth over the stored eps of the previous steps (2, 3, then 4 terms; the history
    holds the eps at each step's own sample, never the averaged or the x' one). That is 1 + steps model calls.
    With a single step (or when sigmas[1] is the list's final entry and 0) there is nothing to start and the
    step is a plain DDIM step, as in diffusers' ``PNDMScheduler`` (the CompVis code instead evaluates the
    corrector at the clamped timestep; only the 1-step case differs).

    Works with any decreasing sigma list (e.g. the host's schedulers; the last entry may be 0) using the fixed
    PLMS weights. ``callback`` gets ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` once per step, with the
    model's x0-prediction at (x_i, sigma_i). ``disable`` (progress bar) is accepted and ignored. Returns the VP
    latent ``x / sqrt(1 + sigmas[-1] ** 2)`` (see the module docstring).
    """
    extra_args = {} if extra_args is None else extra_args
    _check_sigmas(x, sigmas)
    n_steps = sigmas.numel() - 1
    s_in = x.new_ones([x.shape[0]])
    history: list[torch.Tensor] = []
    for i in range(n_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        eps = (x - denoised) / sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if i == 0 and n_steps > 1 and sigma_next > 0:
            x_pred = _ddim_step(x, eps, sigma, sigma_next)
            eps_pred = (x_pred - model(x_pred, sigmas[i + 1] * s_in, **extra_args)) / sigma_next
            eps_step = (eps + eps_pred) / 2
        else:
            eps_step = _plms_eps(eps, history)
        history = [*history[-2:], eps]
        x = _ddim_step(x, eps_step, sigma, sigma_next)
    return _to_vp(x, float(sigmas[-1]))


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DDIM sampler (Song et al. 2021, eta 0), the official non-PLMS option, in sigma space; returns the VP latent.

    One model call per step, ``x <- x + (sigma_next - sigma) * eps``; same host contract as :func:`sample_plms`.
    """
    extra_args = {} if extra_args is None else extra_args
    _check_sigmas(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = _ddim_step(x, (x - denoised) / sigma, sigma, sigma_next)
    return _to_vp(x, float(sigmas[-1]))
