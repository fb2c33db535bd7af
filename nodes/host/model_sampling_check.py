"""Which noise schedule and prediction type the Paint-by-Example UNet may be sampled with: its own, and no other.

The UNet predicts the noise (eps) at the 1000 discrete timesteps of SD-1's schedule, linear betas 0.00085..0.012
(docs/design/model.md; ``pbe_core.edit.sampling.scaled_linear_alphas_cumprod``). A host ``ModelSampling*`` node (ComfyUI's
``comfy_extras/nodes_model_advanced.py``) swaps the MODEL's ``model_sampling`` object on a clone
(``add_object_patch("model_sampling", ...)``), which the samplers then use to turn sigmas into timesteps and the
UNet's output into a denoised latent:

* ``ModelSamplingDiscrete`` with ``sampling = eps`` and ``zsnr`` off builds the object the model already has: the edit
  is unchanged, bit for bit (tests/host/test_host_model_nodes_host.py).
* Every other choice reads the UNet's output as something it is not (``v_prediction``, ``x0``, ``lcm``,
  ``img_to_img``, the EDM and flow parameterisations of the other ``ModelSampling*`` nodes), or feeds it timesteps of
  another schedule (``zsnr``: zero terminal SNR, which needs a v-prediction model, Lin et al. 2023, "Common Diffusion
  Noise Schedules and Sample Steps are Flawed"; ``lcm``'s 50 distilled steps; the continuous schedules). The host
  accepts them for any model and samples a wrong image without a word.

:func:`check_model_sampling` refuses those before the first step, from the model itself
(``PaintByExampleModel.extra_conds``, which every host sampler calls) and from ``PBE_Sampler``: the user meets the
error on the sampler node, naming the node that caused it and what to do.
"""

from __future__ import annotations

import functools

import comfy.model_sampling
import torch

from ...pbe_core.edit.sampling import scaled_linear_alphas_cumprod

#: the methods that turn the UNet's output into a denoised latent: eps-prediction's are ``comfy.model_sampling.EPS``'s
_PREDICTION = ("calculate_input", "calculate_denoised", "noise_scaling", "inverse_noise_scaling")
#: the methods that map sigmas to timesteps: the discrete table's are ``comfy.model_sampling.ModelSamplingDiscrete``'s
_SCHEDULE = ("timestep", "sigma", "percent_to_sigma")

_WHAT_TO_DO = (
    "Remove the ModelSampling node between 'Load Paint-by-Example Model' and the sampler, or set ModelSamplingDiscrete "
    "to sampling 'eps' with zsnr off (which is what the model already uses)."
)


@functools.cache
def trained_sigmas() -> torch.Tensor:
    """The sigma of each of the 1000 training timesteps, sqrt((1 - alpha_bar) / alpha_bar), float64."""
    ac = scaled_linear_alphas_cumprod()
    return ((1.0 - ac) / ac).sqrt()


def _describe(model_sampling) -> str:
    cls = type(model_sampling)
    if cls.__bases__ and cls.__name__ == "ModelSamplingAdvanced":  # the host nodes' class: (schedule, prediction)
        return " + ".join(b.__name__ for b in cls.__bases__)
    return cls.__name__


def check_model_sampling(model_sampling) -> None:
    """Raise ``ValueError`` unless ``model_sampling`` (a MODEL's ``model_sampling`` object, as patched for sampling)
    samples eps-prediction on the discrete SD-1 schedule the model was trained on."""
    cls = type(model_sampling)
    eps = all(getattr(cls, m, None) is getattr(comfy.model_sampling.EPS, m) for m in _PREDICTION)
    discrete = isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete) and all(
        getattr(cls, m, None) is getattr(comfy.model_sampling.ModelSamplingDiscrete, m) for m in _SCHEDULE
    )
    if not (eps and discrete):
        raise ValueError(
            f"The MODEL's sampling was changed to {_describe(model_sampling)} (by ModelSamplingDiscrete or another "
            f"ModelSampling node): the Paint-by-Example UNet predicts the noise (eps) at the 1000 discrete timesteps "
            f"of SD-1's schedule, and read any other way it gives a wrong image. {_WHAT_TO_DO}"
        )
    sigmas = model_sampling.sigmas.detach().to("cpu", torch.float64)
    expected = trained_sigmas()
    if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-4, atol=0.0):
        largest = float(sigmas.max()) if sigmas.numel() else float("nan")
        raise ValueError(
            f"The MODEL's noise schedule was changed (by ModelSamplingDiscrete with zsnr on, or another ModelSampling "
            f"node): {sigmas.numel()} sigmas up to {largest:.4g}, where the Paint-by-Example UNet was trained on 1000 "
            f"up to {float(expected.max()):.4g} (linear betas 0.00085..0.012). Zero terminal SNR (zsnr) needs a "
            f"v-prediction model; this one predicts the noise. {_WHAT_TO_DO}"
        )
