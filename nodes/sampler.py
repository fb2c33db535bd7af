"""PBE_Sampler: the whole Paint-by-Example edit in one node, and the 'reference' sampler.

The edit: encode the exemplar, grow the mask, condition on the masked source, sample (the official PLMS
'reference' or any ComfyUI sampler/scheduler), decode, and paste the result back through the feathered mask so that
every pixel outside it is bit-identical to the source.
"""

from __future__ import annotations

import logging

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..pbe_core import crop_stitch, exemplar_mixing, inputs, mask_ops, sampling
from ..pbe_core.color_match import color_match as color_match_fn
from ..pbe_core.exemplar_preprocess import PREPROCESS_MODES
from .conditioning import MASK_TOOLTIP, encode_exemplars, inpaint_conditioning
from .loader import EncoderType

log = logging.getLogger(__name__)

REFERENCE = "reference"
WINDOW_SHAPES = ("square", "mask_aspect")


class ReferenceSampler(comfy.samplers.KSAMPLER):
    """Official Paint-by-Example inference: PLMS (eta 0) over the uniform timesteps 981, 961, ..., 1.

    The host starts a sampler from unit-variance noise (``noise * sqrt(1 + sigma0^2)``) only when ``sigmas[0]`` is
    the model's largest sigma (``comfy.samplers.Sampler.max_denoise``); the official first timestep is 981, not 999,
    so a full denoise is declared here instead.
    """

    def __init__(self, full_denoise: bool):
        super().__init__(sampling.sample_plms)
        self.full_denoise = full_denoise

    def max_denoise(self, model_wrap, sigmas):
        return self.full_denoise


def reference_sigmas(model, steps: int, denoise: float) -> torch.Tensor:
    """The official sigma list, taken from the model's own sigma table so every step lands on an exact timestep."""
    table = model.get_model_object("model_sampling").sigmas.double().cpu()
    alphas_cumprod = 1.0 / (1.0 + table**2)
    return sampling.official_sigmas(steps, alphas_cumprod, denoise).float()


def sampler_names() -> list[str]:
    return [REFERENCE, *comfy.samplers.KSampler.SAMPLERS]


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_Sampler",
            display_name="Paint by Example",
            category="paint_by_example",
            description=(
                "Paints the exemplar into the masked region of the image, in one node. 'reference' sampling "
                "reproduces the official inference exactly (PLMS over 981, 961, ..., 1); any ComfyUI sampler and "
                "scheduler work too. The result is pasted back through the grown, feathered mask: pixels outside it "
                "are exactly the input's."
            ),
            inputs=[
                io.Model.Input("model", tooltip="MODEL from 'Load Paint-by-Example Model'."),
                EncoderType.Input("encoder", tooltip="PBE_ENCODER from 'Load Paint-by-Example Model'."),
                io.Vae.Input("vae", tooltip="VAE from 'Load Paint-by-Example Model'."),
                io.Image.Input("image", tooltip="Source photo (batches allowed: 1 or N, matching mask and exemplar)."),
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
                io.Image.Input("exemplar", tooltip="The object to paint in; a batch of N gives N results."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="Seed of the initial noise (same noise as KSampler for the same seed and size).",
                ),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip="Sampling steps (official: 50)."),
                io.Float.Input(
                    "cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                    tooltip="Classifier-free guidance scale against the learned unconditional vector (official: 5).",
                ),
                io.Combo.Input(
                    "sampler_name", options=sampler_names(), default=REFERENCE,
                    tooltip="'reference' = the official PLMS sampler (ignores the scheduler); or any ComfyUI sampler.",
                ),
                io.Combo.Input(
                    "scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                    tooltip="ComfyUI scheduler for the non-reference samplers ('ddim_uniform' is closest to official).",
                ),
                io.Float.Input(
                    "denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                    tooltip="1 = paint the region from pure noise (official). Lower keeps more of the original.",
                ),
                io.Int.Input(
                    "mask_grow", default=0, min=-256, max=256,
                    tooltip="Pixels to grow (negative: shrink) the mask before editing.",
                ),
                io.Int.Input(
                    "mask_feather", default=8, min=0, max=256,
                    tooltip="Width in pixels of the soft seam outside the (grown) mask when pasting back; 0 = hard edge.",
                ),
                io.Combo.Input(
                    "exemplar_preprocess", options=list(PREPROCESS_MODES), default="squash", optional=True,
                    tooltip="squash (official): exemplar to 224x224 ignoring aspect; center_crop: diffusers' crop; pad: keep aspect.",
                ),
                io.Mask.Input(
                    "exemplar_mask", optional=True,
                    tooltip="Optional: 1 = the object in the exemplar; the rest is filled neutrally and cropped away.",
                ),
                io.Int.Input(
                    "working_size", default=512, min=0, max=4096, step=8, optional=True,
                    tooltip=(
                        "Long side (pixels) the model edits at. A source of another size is edited through a window "
                        "around the mask scaled to this size, then pasted back. 0 = edit the whole source as it is."
                    ),
                ),
                io.Float.Input(
                    "context_margin", default=0.25, min=0.0, max=4.0, step=0.05, optional=True,
                    tooltip="Context around the mask in the window, as a fraction of the mask box's long side.",
                ),
                io.Combo.Input(
                    "window_shape", options=list(WINDOW_SHAPES), default="square", optional=True,
                    tooltip="square: windows like the model's square training crops; mask_aspect: the mask box's shape.",
                ),
                io.Float.Input(
                    "exemplar_strength", default=1.0, min=-1.0, max=4.0, step=0.05, optional=True,
                    tooltip="0 = no exemplar (learned unconditional vector), 1 = the exemplar, >1 = beyond it.",
                ),
                io.String.Input(
                    "exemplar_weights", default="", optional=True,
                    tooltip="Blend a batch of N exemplars into ONE: N comma-separated weights ('1, 3'). Empty = one "
                    "result per exemplar.",
                ),
                io.Boolean.Input(
                    "color_match", default=False, optional=True,
                    tooltip="Correct the edit's colour shift against a ring of the photo around the mask (Lab mean/std).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The edited image, same size as the input."),
                io.Latent.Output(
                    display_name="LATENT",
                    tooltip="The sampled latent: of the whole (padded) source, or of the last edit window.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, working_size=512):
        # Only what the host cannot check at validation: it checks every other widget's range itself (for the inputs
        # this function does not take), and it reports this function's answer once per input taken. (Combo options:
        # ComfyUI 0.3.64 does not check them for V3 nodes, later versions do; execute checks them once.)
        if isinstance(working_size, int) and working_size % 8:
            return (
                f"working_size={working_size} must be 0 (edit the whole image) or a multiple of 8; "
                f"use {max(8, round(working_size / 8) * 8)}."
            )
        return True

    @classmethod
    def execute(
        cls, model, encoder, vae, image, mask, exemplar, seed, steps, cfg, sampler_name, scheduler, denoise,
        mask_grow, mask_feather, exemplar_preprocess="squash", exemplar_mask=None, working_size=512,
        context_margin=0.25, window_shape="square", exemplar_strength=1.0, exemplar_weights="", color_match=False,
    ) -> io.NodeOutput:
        inputs.check_finite(cfg=cfg, denoise=denoise, context_margin=context_margin,
                            exemplar_strength=exemplar_strength)
        inputs.check_choice("sampler_name", sampler_name, sampler_names())
        inputs.check_choice("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)
        inputs.check_choice("window_shape", window_shape, WINDOW_SHAPES)
        inputs.check_choice("exemplar_preprocess", exemplar_preprocess, PREPROCESS_MODES)
        image = inputs.check_image(image, "Source image")
        mask = inputs.check_mask(mask, image)
        cond, uncond = encode_exemplars(encoder, exemplar, exemplar_mask, exemplar_preprocess)
        if exemplar_weights.strip():
            cond = exemplar_mixing.blend(cond, exemplar_mixing.parse_weights(exemplar_weights, cond.shape[0]))
            uncond = uncond[:1]
        cond = exemplar_mixing.strength(cond, uncond, float(exemplar_strength))
        n = inputs.batch_size(source=image.shape[0], mask=mask.shape[0], exemplar=cond.shape[0])
        image, mask = inputs.repeat_to(image, n), inputs.repeat_to(mask, n)
        cond, uncond = inputs.repeat_to(cond, n), inputs.repeat_to(uncond, n)
        region = mask_ops.binarize(mask)
        if mask_grow:
            region = mask_ops.grow_mask(region, mask_grow)
            if not bool(region.any()):
                raise ValueError(f"mask_grow={mask_grow} shrinks the mask to nothing; use a smaller shrink.")
        paste = mask_ops.feather_mask(region, mask_feather) if mask_feather else region

        settings = dict(
            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
            color_match=color_match,
        )
        windows = edit_windows(tuple(image.shape[1:3]), paste, working_size, context_margin, window_shape)
        if windows is None:  # the source is at the working size (or working_size is 0): edit it whole
            samples, decoded = _edit(model, vae, image, region, cond, uncond, **settings)
            m = paste[..., None]
            # torch.where, not arithmetic: where the paste mask is 0 the output is the source's values, bit for bit
            result = torch.where(m > 0, image * (1 - m) + decoded * m, image)
            return io.NodeOutput(result, {"samples": samples})
        result, samples = image, None
        for window in windows:
            log.info(
                "Paint by Example: editing the %dx%d window at (x %d, y %d) at %dx%d",
                window.width, window.height, window.x0, window.y0, window.target[1], window.target[0],
            )
            crop = crop_stitch.crop_to_window(image, window)
            crop_region = mask_ops.binarize(crop_stitch.crop_to_window(region, window))
            if not bool(crop_region.any()):
                continue  # the window only holds feathering of a neighbour's region
            samples, decoded = _edit(model, vae, crop, crop_region, cond, uncond, **settings)
            result = crop_stitch.stitch(result, decoded, window, paste)
        return io.NodeOutput(result, {"samples": samples})


def edit_windows(image_hw, paste, working_size, margin, shape):
    """Crop windows for the edit, or None when the whole source is edited as it is.

    The whole source is used when ``working_size`` is 0 or the source already is at the working size (long side
    == working_size, both sides multiples of 8), as the official inference does. Otherwise each cluster of mask
    regions (of the feathered paste mask, so the seam lies inside its window) gets its own window.
    """
    h, w = image_hw
    if working_size == 0 or (max(h, w) == working_size and h % 8 == 0 and w % 8 == 0):
        return None
    boxes = mask_ops.connected_regions(paste)
    return crop_stitch.plan_windows(image_hw, boxes, margin=margin, shape=shape, working_size=working_size)


def _edit(model, vae, image, region, cond, uncond, *, seed, steps, cfg, sampler_name, scheduler, denoise,
          color_match=False):
    """Sample one edit of ``image`` (B, H, W, 3) in ``region`` (B, H, W, 0/1). Returns (latent, decoded (B,H,W,3))."""
    full = denoise >= 0.9999
    positive, negative, latent, (h, w) = inpaint_conditioning(
        [[cond, {}]], [[uncond, {}]], vae, image, region, source_latent=not full
    )
    # Like the reference, the whole latent is denoised (no noise_mask): the paste-back restores the rest.
    latent_image = latent["samples"]
    noise = comfy.sample.prepare_noise(latent_image, seed)
    callback = latent_preview.prepare_callback(model, steps)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    if sampler_name == REFERENCE:
        sigmas = reference_sigmas(model, steps, float(denoise))
        samples = comfy.sample.sample_custom(
            model, noise, cfg, ReferenceSampler(full), sigmas, positive, negative, latent_image,
            callback=callback, disable_pbar=disable_pbar, seed=seed,
        )
    else:
        samples = comfy.sample.sample(
            model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, callback=callback, disable_pbar=disable_pbar, seed=seed,
        )
    decoded = vae.decode(samples)[:, :h, :w, :3].float().to(image.device)
    if color_match:
        decoded = color_match_fn(decoded, image, region)
    return samples, decoded
