"""PBE_Sampler: the whole Paint-by-Example edit in one node.

The edit, as numbered steps (``execute``): encode the exemplars; plan the edit (``pbe_core.edit.plan``: the inputs
checked, the mask grown and feathered, the windows chosen); sample each window with the host (the official PLMS
'reference' or any ComfyUI sampler and scheduler) and decode it; paste the results back through the feathered mask,
so that every pixel outside it is bit-identical to the source.
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..pbe_core.edit.plan import WINDOW_SHAPES, EditSettings, paste_back, plan_edit
from ..pbe_core.exemplar import mixing as exemplar_mixing
from ..pbe_core.exemplar.preprocess import MASK_MARKS, PREPROCESS_MODES
from ..pbe_core.photo import inputs
from .host.encoder import EncoderType, encode_exemplars
from .host.model_sampling_check import check_model_sampling
from .host.model_type import check_same_checkpoint
from .host.sampling import REFERENCE, check_memory, host_sampler, reference_sigmas, sample_window, sampler_names
from .host.tooltips import (
    ENCODER_TOOLTIP,
    EXEMPLAR_MASK_TOOLTIP,
    MASK_MARKS_TOOLTIP,
    MASK_TOOLTIP,
    MODEL_TOOLTIP,
    VAE_TOOLTIP,
)


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
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                EncoderType.Input("encoder", tooltip=ENCODER_TOOLTIP),
                io.Vae.Input("vae", tooltip=VAE_TOOLTIP),
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
                io.Mask.Input("exemplar_mask", optional=True, tooltip=EXEMPLAR_MASK_TOOLTIP),
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
                io.Combo.Input(
                    "exemplar_mask_marks", options=list(MASK_MARKS), default="auto", optional=True,
                    tooltip=MASK_MARKS_TOOLTIP,
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
        try:
            EditSettings(working_size=working_size).check()
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls, model, encoder, vae, image, mask, exemplar, seed, steps, cfg, sampler_name, scheduler, denoise,
        mask_grow, mask_feather, exemplar_preprocess="squash", exemplar_mask=None, working_size=512,
        context_margin=0.25, window_shape="square", exemplar_strength=1.0, exemplar_weights="", color_match=False,
        exemplar_mask_marks="auto",
    ) -> io.NodeOutput:
        inputs.check_finite(cfg=cfg, denoise=denoise, exemplar_strength=exemplar_strength)
        inputs.check_choice("sampler_name", sampler_name, sampler_names())
        inputs.check_choice("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)
        check_same_checkpoint(model, encoder, vae)
        check_model_sampling(model.get_model_object("model_sampling"))
        # 1. Encode the exemplars (the encoder remembers recent ones) and mix them as asked
        cond, uncond = encode_exemplars(encoder, exemplar, exemplar_mask, exemplar_preprocess,
                                        mask_marks=exemplar_mask_marks)
        cond, uncond = exemplar_mixing.mix(cond, uncond, exemplar_weights, float(exemplar_strength))
        # 2. Plan the edit: the inputs checked, the mask grown and feathered, the windows the model edits
        settings = EditSettings(mask_grow, mask_feather, working_size, context_margin, window_shape,
                                color_match=bool(color_match))
        plan = plan_edit(image, mask, settings, batch=cond.shape[0])
        n = plan.source.shape[0]
        cond, uncond = inputs.repeat_to(cond, n), inputs.repeat_to(uncond, n)
        for window in plan.windows:
            check_memory(vae, window)
        # 3. Each window: condition on its masked source, sample with the host, decode
        edits, samples = [], None
        for window in plan.windows:
            samples, decoded = sample_window(
                model, vae, window, cond, uncond, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                scheduler=scheduler, denoise=denoise,
            )  # fmt: skip
            edits.append(decoded)
        # 4. Paste back: outside the feathered mask every pixel is the source's
        return io.NodeOutput(paste_back(plan, edits), {"samples": samples})


class SamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_SamplerSelect",
            display_name="Paint-by-Example Sampler Select",
            category="paint_by_example",
            description=(
                "A SAMPLER for SamplerCustomAdvanced that starts a full-denoise edit from unit-variance noise, as the "
                "paper's samplers do (ComfyUI does so only when the schedule starts at the model's largest sigma, "
                "which ddim_uniform, for one, does not). 'reference' is the official PLMS sampler. For a partial "
                "denoise use ComfyUI's KSamplerSelect."
            ),
            inputs=[
                io.Combo.Input(
                    "sampler_name", options=sampler_names(), default="ddim",
                    tooltip="'reference' = the official PLMS sampler; or any ComfyUI sampler.",
                ),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER", tooltip="For SamplerCustomAdvanced, at denoise 1.")],
        )

    @classmethod
    def execute(cls, sampler_name) -> io.NodeOutput:
        inputs.check_choice("sampler_name", sampler_name, sampler_names())
        return io.NodeOutput(host_sampler(sampler_name, full_denoise=True))


class ReferenceScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ReferenceScheduler",
            display_name="Paint-by-Example Reference Scheduler",
            category="paint_by_example",
            description=(
                "The official sampler's SIGMAS: the uniform timesteps 981, 961, ..., 1 for 50 steps (1000 // steps "
                "apart, offset 1), ending at timestep 0's noise level, on the model's own sigma table. With 'Sampler "
                "Select' set to 'reference' in SamplerCustomAdvanced it samples exactly what 'Paint by Example' with "
                "the reference sampler samples."
            ),
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip="Sampling steps (official: 50)."),
                io.Float.Input(
                    "denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                    tooltip="1 = from pure noise (official); below, the last steps of a longer schedule.",
                ),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, steps, denoise) -> io.NodeOutput:
        inputs.check_finite(denoise=denoise)
        check_model_sampling(model.get_model_object("model_sampling"))  # the sigma table it reads
        return io.NodeOutput(reference_sigmas(model, steps, float(denoise)))
