"""Nodes for real photos: mask tools, crop-and-stitch around any sampler, exemplar batch, blend and strength, colour
match.

Thin glue over ``pbe_core.photo.mask_ops``, ``pbe_core.photo.crop_stitch``, ``pbe_core.exemplar.preprocess``,
``pbe_core.exemplar.mixing`` and ``pbe_core.photo.color_match``.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..pbe_core.edit.plan import WINDOW_SHAPES, EditSettings, paste_back, plan_edit
from ..pbe_core.exemplar import mixing as exemplar_mixing
from ..pbe_core.exemplar.preprocess import BATCH_MODES, batch_exemplars
from ..pbe_core.photo import color_match, crop_stitch, inputs, mask_ops
from .host.tooltips import MASK_TOOLTIP

CATEGORY = "paint_by_example/tools"

#: from 'Crop for Edit' to 'Stitch Edit'; its value is the edit plan (``pbe_core.edit.plan.EditPlan``) with one window
StitchType = io.Custom("PBE_STITCH")


class MaskTools(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_MaskTools",
            display_name="Paint-by-Example Mask Tools",
            category=CATEGORY,
            description=(
                "Prepares a mask for Paint by Example: fill holes, turn it into its bounding box (the model was "
                "trained on boxes and rough shapes), grow or shrink it, feather its edge outward."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
                io.Int.Input("grow", default=0, min=-256, max=256, tooltip="Pixels to grow (negative: shrink)."),
                io.Int.Input("feather", default=0, min=0, max=256, tooltip="Width in pixels of an outward soft edge."),
                io.Boolean.Input("fill_holes", default=False, tooltip="Fill holes not connected to the border."),
                io.Combo.Input(
                    "shape", options=["as_is", "box"], default="as_is",
                    tooltip="box: replace each mask by its bounding box (the model's training shape).",
                ),
            ],
            outputs=[io.Mask.Output(display_name="MASK", tooltip="The processed mask (1 = region to replace).")],
        )

    @classmethod
    def execute(cls, mask, grow, feather, fill_holes, shape) -> io.NodeOutput:
        inputs.check_choice("shape", shape, ("as_is", "box"))
        m = inputs.check_mask_values(mask)
        if fill_holes:
            m = mask_ops.fill_holes(m)
        if shape == "box":
            m = mask_ops.box_mask(m)
        if grow:
            m = mask_ops.grow_mask(m, grow)
        if feather:
            m = mask_ops.feather_mask(m, feather)
        return io.NodeOutput(m)


class CropForEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_CropForEdit",
            display_name="Paint-by-Example Crop for Edit",
            category=CATEGORY,
            description=(
                "Cuts a context window around the mask (all mask regions together) and scales it to the model's "
                "working size, so any sampler can edit a photo of any size; 'Stitch Edit' puts the result back. "
                "Pixels outside the feathered mask stay exactly the source's."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Source photo, any size."),
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
                io.Int.Input("working_size", default=512, min=64, max=4096, step=8,
                             tooltip="Long side of the crop in pixels (a multiple of 8)."),
                io.Float.Input("context_margin", default=0.25, min=0.0, max=4.0, step=0.05,
                               tooltip="Context around the mask, as a fraction of the mask box's long side."),
                io.Combo.Input("window_shape", options=list(WINDOW_SHAPES), default="square",
                               tooltip="square: like the model's training crops; mask_aspect: the mask box's shape."),
                io.Int.Input("feather", default=8, min=0, max=256,
                             tooltip="Width in pixels of the soft seam outside the mask when stitching back."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The crop at the working size."),
                io.Mask.Output(display_name="MASK", tooltip="The mask of the crop (1 = region to replace)."),
                StitchType.Output(display_name="STITCH", tooltip="Where the crop came from, for 'Stitch Edit'."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, working_size, context_margin, window_shape, feather) -> io.NodeOutput:
        # the same plan as the one-node sampler's, with one window for all mask regions
        settings = EditSettings(mask_feather=feather, working_size=working_size, context_margin=context_margin,
                                window_shape=window_shape, one_window=True)
        plan = plan_edit(image, mask, settings)
        (window,) = plan.windows
        return io.NodeOutput(window.image, window.region, plan)


class StitchEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_StitchEdit",
            display_name="Paint-by-Example Stitch Edit",
            category=CATEGORY,
            description="Scales an edited crop back and pastes it into the source through the feathered mask.",
            inputs=[
                StitchType.Input("stitch", tooltip="From 'Crop for Edit'."),
                io.Image.Input("edited", tooltip="The edited crop (same size as the crop 'Crop for Edit' gave)."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The source with the edit pasted in.")],
        )

    @classmethod
    def execute(cls, stitch, edited) -> io.NodeOutput:
        return io.NodeOutput(paste_back(stitch, [inputs.check_image(edited, "Edited image")]))


class ExemplarStrength(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ExemplarStrength",
            display_name="Paint-by-Example Exemplar Strength",
            category=CATEGORY,
            description=(
                "Scales how much the exemplar drives the edit: positive = negative + strength x (positive - negative). "
                "0 = no exemplar (the learned unconditional vector), 1 = the exemplar, above 1 = exaggerated."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Exemplar Encode' (or 'Exemplar Blend')."),
                io.Conditioning.Input("negative", tooltip="The matching negative from 'Exemplar Encode'."),
                io.Float.Input("strength", default=1.0, min=-1.0, max=4.0, step=0.05,
                               tooltip="0 = unconditional, 1 = exemplar, >1 = beyond it."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="The rescaled exemplar context.")],
        )

    @classmethod
    def execute(cls, positive, negative, strength) -> io.NodeOutput:
        uncond = negative[0][0]
        out = []
        for t, d in positive:
            u = uncond if uncond.shape[0] in (1, t.shape[0]) else uncond[:1]
            out.append([exemplar_mixing.strength(t, u.to(t), float(strength)), d.copy()])
        return io.NodeOutput(out)


class ExemplarBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ExemplarBlend",
            display_name="Paint-by-Example Exemplar Blend",
            category=CATEGORY,
            description="Blends a batch of N encoded exemplars into one, with weights (normalised to sum 1).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Exemplar Encode' with a batch of N exemplars."),
                io.Conditioning.Input("negative", tooltip="The matching negative."),
                io.String.Input("weights", default="", tooltip="N comma-separated weights, e.g. '1, 3'; empty = equal."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="One blended exemplar context."),
                io.Conditioning.Output(display_name="negative", tooltip="One unconditional context."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, weights) -> io.NodeOutput:
        cond = positive[0][0]
        mixed = exemplar_mixing.blend(cond, exemplar_mixing.parse_weights(weights, cond.shape[0]))
        return io.NodeOutput([[mixed, positive[0][1].copy()]], [[negative[0][0][:1], negative[0][1].copy()]])


class ExemplarBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ExemplarBatch",
            display_name="Paint-by-Example Exemplar Batch",
            category=CATEGORY,
            description=(
                "Puts exemplars of any sizes into one batch for 'Paint by Example' or 'Exemplar Encode': one result "
                "per exemplar in one run. Each is brought to the 224 x 224 pixels the model sees, exactly as the "
                "encoder would ('squash' or 'center_crop'), so each is encoded exactly as it would be alone."
            ),
            inputs=[
                io.Image.Input("exemplar", tooltip="The first exemplar (a batch is taken whole, as are the others)."),
                io.Combo.Input(
                    "preprocess", options=list(BATCH_MODES), default="squash",
                    tooltip="squash (official): the whole exemplar to 224x224 ignoring aspect; center_crop: shortest "
                    "side to 224, then the central square.",
                ),
                io.Image.Input("exemplar_2", optional=True, tooltip="The second exemplar (optional)."),
                io.Image.Input("exemplar_3", optional=True, tooltip="The third exemplar (optional)."),
                io.Image.Input("exemplar_4", optional=True, tooltip="The fourth exemplar (optional)."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The exemplars, 224 x 224 each, in input order.")],
        )

    @classmethod
    def execute(cls, exemplar, preprocess="squash", exemplar_2=None, exemplar_3=None, exemplar_4=None
                ) -> io.NodeOutput:
        inputs.check_choice("preprocess", preprocess, BATCH_MODES)
        images = [x for x in (exemplar, exemplar_2, exemplar_3, exemplar_4) if x is not None]
        return io.NodeOutput(batch_exemplars(images, preprocess))


class ColorMatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PBE_ColorMatch",
            display_name="Paint-by-Example Color Match",
            category=CATEGORY,
            description=(
                "Removes the colour shift of an edit: matches the edit's colour statistics (CIE Lab mean and std) on "
                "a ring just outside the mask to the source's there, and applies the correction inside the mask."
            ),
            inputs=[
                io.Image.Input("edited", tooltip="The edited image (same size as the source)."),
                io.Image.Input("source", tooltip="The original photo."),
                io.Mask.Input("mask", tooltip=MASK_TOOLTIP),
                io.Int.Input("ring_width", default=16, min=2, max=256, tooltip="Width in pixels of the measuring ring."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The edit, colour-corrected inside the mask.")],
        )

    @classmethod
    def execute(cls, edited, source, mask, ring_width) -> io.NodeOutput:
        source = inputs.check_image(source, "Source image")
        edited = inputs.check_image(edited, "Edited image")
        if edited.shape[1:3] != source.shape[1:3]:
            raise ValueError(
                f"The edited image is {inputs.wxh(edited)} but the source is {inputs.wxh(source)}; connect images of "
                f"the same size."
            )
        mask = inputs.check_mask(mask, source)
        region = mask_ops.binarize(mask)
        n = inputs.batch_size(edited=edited.shape[0], source=source.shape[0], mask=region.shape[0])
        edited, region = inputs.repeat_to(edited, n), inputs.repeat_to(region, n)
        matched = color_match.color_match(edited, source, region, ring_width)
        return io.NodeOutput(crop_stitch.blend(edited, matched, region))


NODES = [MaskTools, CropForEdit, StitchEdit, ExemplarBatch, ExemplarStrength, ExemplarBlend, ColorMatch]
