"""PBE_ExemplarEncode and PBE_InpaintConditioning: the two halves of Paint by Example's conditioning.

Shared helpers here are also used by the one-node ``PBE_Sampler``.
"""

from __future__ import annotations

import logging

import node_helpers
import torch
from comfy_api.latest import io

from ..pbe_core import edit_conditioning as ec
from ..pbe_core import inputs, mask_ops
from ..pbe_core.exemplar_preprocess import PREPROCESS_MODES, prepare_exemplars
from .loader import EncoderType

log = logging.getLogger(__name__)

MASK_TOOLTIP = "Region to replace: 1 (white) = paint the exemplar here, 0 = keep. As LoadImage's alpha / the mask editor."


def encode_exemplars(encoder, image, mask=None, preprocess="squash", crop_padding=10):
    """Exemplar IMAGE (B, H, W, C) (+ object MASK) -> (cond (B, 1, C), uncond (B, 1, C)), float32."""
    image = inputs.check_image(image, "Exemplar image")
    if mask is not None and mask_ops.is_placeholder_mask(mask, tuple(image.shape[1:3])):
        mask = None  # LoadImage's stand-in for "no alpha": use the whole exemplar
    pixels = prepare_exemplars(image, mask, preprocess, encoder.info.clip_image_size, crop_padding)
    cond = encoder.encode(pixels)
    return cond, encoder.unconditional(cond.shape[0])


def conditioning_batch(conditioning) -> int:
    """Largest batch among a CONDITIONING's entries (the number of exemplars it carries)."""
    return max(int(c[0].shape[0]) for c in conditioning)


def inpaint_conditioning(positive, negative, vae, image, mask, *, source_latent=True):
    """Attach the masked-source latent and the mask to both conditionings; build the LATENT to sample.

    image (B_s, H, W, C), mask (B_m, H, W) in ComfyUI polarity. Sides that are not multiples of 8 are padded
    (edge pixels, kept region) and the LATENT covers the padded size. Returns (positive, negative, latent dict,
    (H, W) of the unpadded source).
    """
    image = inputs.check_image(image, "Source image")
    mask = inputs.check_mask(mask, image)
    n = inputs.batch_size(source=image.shape[0], mask=mask.shape[0], exemplar=conditioning_batch(positive))
    image, mask, hw = ec.pad_to_multiple(inputs.repeat_to(image, n), inputs.repeat_to(mask, n), multiple=8)
    keep = ec.keep_mask(mask)
    region = ec.region_mask(mask)[:, 0]
    masked_latent = vae.encode(ec.masked_source(image, keep))
    out = []
    for conditioning in (positive, negative):
        out.append(
            node_helpers.conditioning_set_values(
                conditioning, {"concat_latent_image": masked_latent, "concat_mask": region}
            )
        )
    if source_latent:
        samples = vae.encode(image)
    else:
        samples = torch.zeros_like(masked_latent)
    latent = {"samples": samples, "noise_mask": region.unsqueeze(1)}
    return out[0], out[1], latent, hw


class ExemplarEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ExemplarEncode",
            display_name="Paint-by-Example Exemplar Encode",
            category="paint_by_example",
            description=(
                "Encodes the exemplar (the object to paint in) into Paint by Example's single conditioning token "
                "(CLIP ViT-L/14 class token -> information bottleneck). The negative is the model's learned "
                "unconditional vector, one per exemplar. A batch of exemplars gives one edit per exemplar."
            ),
            inputs=[
                EncoderType.Input("encoder", tooltip="PBE_ENCODER from 'Load Paint-by-Example Model'."),
                io.Image.Input("exemplar", tooltip="The object to paint in; a batch gives one result per exemplar."),
                io.Combo.Input(
                    "preprocess",
                    options=list(PREPROCESS_MODES),
                    default="squash",
                    tooltip=(
                        "squash: whole exemplar resized to 224x224 ignoring aspect (official, default). "
                        "center_crop: short side to 224 then the central square (diffusers; may cut a wide object). "
                        "pad: long side to 224, short side padded (keeps the aspect ratio)."
                    ),
                ),
                io.Mask.Input(
                    "exemplar_mask",
                    optional=True,
                    tooltip="Optional: 1 = the object. Outside it the exemplar is filled neutrally, then cropped to it.",
                ),
                io.Int.Input(
                    "crop_padding", default=10, min=0, max=512, optional=True,
                    tooltip="With an exemplar mask: pixels kept around the object's box when cropping (paper: <= 10).",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Exemplar context (batch, 1, 768)."),
                io.Conditioning.Output(display_name="negative", tooltip="Learned unconditional context (batch, 1, 768)."),
            ],
        )

    @classmethod
    def execute(cls, encoder, exemplar, preprocess="squash", exemplar_mask=None, crop_padding=10) -> io.NodeOutput:
        cond, uncond = encode_exemplars(encoder, exemplar, exemplar_mask, preprocess, crop_padding)
        return io.NodeOutput([[cond, {}]], [[uncond, {}]])


class InpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_InpaintConditioning",
            display_name="Paint-by-Example Inpaint Conditioning",
            category="paint_by_example",
            description=(
                "Gives Paint by Example the source and the region to replace: encodes the source with the region "
                "greyed out and attaches it and the mask to both conditionings (in the model's own channel order and "
                "keep-mask polarity). Outputs the LATENT to sample, with the mask as noise_mask. Sides that are not "
                "multiples of 8 are padded; VAEDecode then returns the padded size."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="From PBE_ExemplarEncode."),
                io.Conditioning.Input("negative", tooltip="From PBE_ExemplarEncode."),
                io.Vae.Input("vae", tooltip="The VAE from 'Load Paint-by-Example Model'."),
                io.Image.Input("image", tooltip="Source photo (any size; batches allowed)."),
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Exemplar context + masked source + mask."),
                io.Conditioning.Output(display_name="negative", tooltip="Unconditional context + masked source + mask."),
                io.Latent.Output(
                    display_name="latent",
                    tooltip="The source's latent with noise_mask = the region (samplers keep the rest).",
                ),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, image, mask) -> io.NodeOutput:
        pos, neg, latent, _ = inpaint_conditioning(positive, negative, vae, image, mask)
        return io.NodeOutput(pos, neg, latent)
