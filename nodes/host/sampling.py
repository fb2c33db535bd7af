"""Sampling one edit window with the host: the official sampler, the host's samplers, the memory an edit needs.

* ``reference``: the official inference, PLMS (eta 0) over the uniform timesteps 981, 961, ..., 1
  (``pbe_core.edit.sampling``), on the host's own sigma table so every step lands on an exact timestep.
* Every host sampler (euler, ddim, dpmpp_2m, ...) with any host scheduler.

At a full denoise every one of them starts from unit-variance noise, as the paper's samplers do. The host does so
only when the schedule's first sigma is the model's largest (ComfyUI 0.3.64 ``comfy/samplers.py``
``Sampler.max_denoise``); ``ddim_uniform``'s first step is timestep 901 of 999 for 10 steps, and the host would then
start from ``sigma * noise``, 0.5 % too little. :class:`FromNoise` says "full denoise" itself.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ...pbe_core.edit import sampling
from ...pbe_core.edit.plan import EditWindow
from .conditioning import window_conditioning

REFERENCE = "reference"


def sampler_names() -> list[str]:
    return [REFERENCE, *comfy.samplers.KSampler.SAMPLERS]


class FromNoise(comfy.samplers.KSAMPLER):
    """A host sampler (``KSAMPLER``) that, at a full denoise, starts from unit-variance noise."""

    def __init__(self, sampler_function, extra_options=None, inpaint_options=None, *, full_denoise: bool = True):
        super().__init__(sampler_function, extra_options or {}, inpaint_options or {})
        self.full_denoise = full_denoise

    def max_denoise(self, model_wrap, sigmas):
        return self.full_denoise or super().max_denoise(model_wrap, sigmas)


def host_sampler(name: str, full_denoise: bool) -> FromNoise:
    """The sampler called ``name`` (``reference`` or a host sampler) as a :class:`FromNoise`."""
    if name == REFERENCE:
        return FromNoise(sampling.sample_plms, full_denoise=full_denoise)
    inner = comfy.samplers.sampler_object(name)  # a KSAMPLER for every host sampler name
    return FromNoise(inner.sampler_function, inner.extra_options, inner.inpaint_options, full_denoise=full_denoise)


def reference_sigmas(model, steps: int, denoise: float) -> torch.Tensor:
    """The official sigma list, taken from the model's own sigma table so every step lands on an exact timestep."""
    table = model.get_model_object("model_sampling").sigmas.double().cpu()
    alphas_cumprod = 1.0 / (1.0 + table**2)
    return sampling.official_sigmas(steps, alphas_cumprod, denoise).float()


def sigmas_for(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """The sigmas ``sampler_name`` walks: the official ones for ``reference``, else the host's own choice for that
    sampler, scheduler, step count and denoise (its ``KSampler``: the same list KSampler samples)."""
    if sampler_name == REFERENCE:
        return reference_sigmas(model, steps, denoise)
    return comfy.samplers.KSampler(model, steps, model.load_device, sampler_name, scheduler, denoise,
                                   model.model_options).sigmas.cpu()


def check_memory(vae, window: EditWindow) -> None:
    """Refuse, before anything runs, a window the VAE cannot encode or decode in the memory that is free.

    Uses the host's own estimates (``VAE.memory_used_encode`` / ``memory_used_decode``, per image) against
    ``model_management.get_free_memory``. Only on the CPU: there the allocator's failure ends the prompt after
    minutes, while on a GPU the host decodes in tiles when memory runs out.
    """
    device = torch.device(vae.device)
    if device.type != "cpu":
        return
    h, w = window.image.shape[1:3]
    f = vae.downscale_ratio

    def need(hh, ww):
        return max(vae.memory_used_encode((1, 3, hh, ww), vae.vae_dtype),
                   vae.memory_used_decode((1, 4, hh // f, ww // f), vae.vae_dtype))

    free = comfy.model_management.get_free_memory(device)
    if need(h, w) <= free:
        return
    fits = next((s for s in range(max(h, w) - 64, 63, -64) if need(*_scaled(h, w, s)) <= free), None)
    raise ValueError(
        f"An edit at {w}x{h} needs about {need(h, w) / 2**30:.1f} GB for the VAE, but {free / 2**30:.1f} GB are "
        f"free. Lower working_size"
        + (f" to {fits} or less" if fits else "")
        + " (crop-and-stitch edits the region around the mask at that size), or free memory."
    )


def _scaled(h: int, w: int, long_side: int) -> tuple[int, int]:
    if h >= w:
        return long_side, max(8, round(long_side * w / h / 8) * 8)
    return max(8, round(long_side * h / w / 8) * 8), long_side


def sample_window(model, vae, window: EditWindow, cond, uncond, *, seed, steps, cfg, sampler_name, scheduler,
                  denoise):
    """Sample ``window`` with the exemplar tokens ``cond`` / ``uncond`` (B, 1, C) and decode it.

    Returns ``(latent (B, 4, h/8, w/8), decoded IMAGE (B, h, w, 3))``. At a full denoise the whole latent is
    sampled from noise (as the paper); below it, from the window's own latent (img2img of the window); the
    paste-back keeps everything outside the mask either way.
    """
    full = denoise >= 0.9999
    positive, negative, latent = window_conditioning(
        [[cond, {}]], [[uncond, {}]], vae, window, latent="empty" if full else "source"
    )
    latent_image = latent["samples"]
    noise = comfy.sample.prepare_noise(latent_image, seed)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, host_sampler(sampler_name, full), sigmas_for(model, sampler_name, scheduler, steps, denoise),
        positive, negative, latent_image, callback=latent_preview.prepare_callback(model, steps),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )  # fmt: skip
    return samples, vae.decode(samples)[..., :3].float().to(window.image.device)
