"""PBE_ExemplarEncode and PBE_InpaintConditioning: the two halves of Paint by Example's conditioning, as nodes.

With them any host sampler (KSampler, SamplerCustomAdvanced, ...) edits with the model; ``PBE_Sampler`` does the same
in one node. The work is ``nodes/host`` (encoder, conditioning) over ``pbe_core`` (preprocessing, the edit plan).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..pbe_core.edit.plan import EditSettings, plan_edit
from ..pbe_core.exemplar.preprocess import MASK_MARKS, PREPROCESS_MODES
from ..pbe_core.photo import inputs
from .host.conditioning import LATENTS, window_conditioning
from .host.encoder import EncoderType, encode_exemplars
from .host.tooltips import (
    ENCODER_TOOLTIP,
    EXEMPLAR_MASK_TOOLTIP,
    MASK_MARKS_TOOLTIP,
    MASK_TOOLTIP,
    PREPROCESS_TOOLTIP,
)


def conditioning_batch(conditioning) -> int:
    """Largest batch among a CONDITIONING's entries (the number of exemplars it carries)."""
    return max(int(c[0].shape[0]) for c in conditioning)


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
                EncoderType.Input("encoder", tooltip=ENCODER_TOOLTIP),
                io.Image.Input("exemplar", tooltip="The object to paint in; a batch gives one result per exemplar."),
                io.Combo.Input("preprocess", options=list(PREPROCESS_MODES), default="squash", tooltip=PREPROCESS_TOOLTIP),
                io.Mask.Input("exemplar_mask", optional=True, tooltip=EXEMPLAR_MASK_TOOLTIP),
                io.Int.Input(
                    "crop_padding", default=10, min=0, max=512, optional=True,
                    tooltip="With an exemplar mask: pixels kept around the object's box when cropping (paper: <= 10).",
                ),
                io.Combo.Input(
                    "exemplar_mask_marks", options=list(MASK_MARKS), default="auto", optional=True,
                    tooltip=MASK_MARKS_TOOLTIP,
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Exemplar context (batch, 1, 768)."),
                io.Conditioning.Output(display_name="negative", tooltip="Learned unconditional context (batch, 1, 768)."),
            ],
        )

    @classmethod
    def execute(cls, encoder, exemplar, preprocess="squash", exemplar_mask=None, crop_padding=10,
                exemplar_mask_marks="auto") -> io.NodeOutput:
        cond, uncond = encode_exemplars(encoder, exemplar, exemplar_mask, preprocess, crop_padding, exemplar_mask_marks)
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
                "keep-mask polarity). Outputs the LATENT to sample: empty by default, so that a sampler at denoise 1 "
                "samples what the paper samples (the whole latent from noise; paste the result back through the mask "
                "afterwards). Sides that are not multiples of 8 are padded; VAEDecode then returns the padded size."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="From PBE_ExemplarEncode."),
                io.Conditioning.Input("negative", tooltip="From PBE_ExemplarEncode."),
                io.Vae.Input("vae", tooltip="The VAE from 'Load Paint-by-Example Model'."),
                io.Image.Input("image", tooltip="Source photo (any size; batches allowed)."),
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
                io.Combo.Input(
                    "latent", options=list(LATENTS), default="empty", optional=True,
                    tooltip=(
                        "empty: the LATENT is zeros without a noise mask, so a sampler at denoise 1 starts from pure "
                        "noise everywhere, as the paper does (the official results). source: the source's own latent "
                        "with noise_mask = the region, so samplers keep the unmasked source at every step; for "
                        "denoise below 1."
                    ),
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Exemplar context + masked source + mask."),
                io.Conditioning.Output(display_name="negative", tooltip="Unconditional context + masked source + mask."),
                io.Latent.Output(
                    display_name="latent",
                    tooltip="What to sample: empty (from noise, as the paper) or the source with its noise mask.",
                ),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, image, mask, latent="empty") -> io.NodeOutput:
        inputs.check_choice("latent", latent, LATENTS)
        # the whole source is one window of an edit plan: checked, binarised, padded to multiples of 8
        plan = plan_edit(image, mask, EditSettings(working_size=0, mask_feather=0), batch=conditioning_batch(positive))
        pos, neg, samples = window_conditioning(positive, negative, vae, plan.windows[0], latent)
        return io.NodeOutput(pos, neg, samples)
