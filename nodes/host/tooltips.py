"""Tooltips several nodes share (one wording for one input, wherever it appears)."""

MASK_TOOLTIP = "Region to replace: 1 (white) = paint the exemplar here, 0 = keep. As LoadImage's alpha / the mask editor."
MODEL_TOOLTIP = "MODEL from 'Load Paint-by-Example Model'."
ENCODER_TOOLTIP = "PBE_ENCODER from 'Load Paint-by-Example Model'."
VAE_TOOLTIP = "VAE from 'Load Paint-by-Example Model'."

EXEMPLAR_MASK_TOOLTIP = (
    "Optional: the exemplar's object. Outside it the exemplar is filled neutrally, then cropped to it. Either wiring "
    "works: the mask of a cut-out PNG from LoadImage (1 = transparent background) or the object painted in the mask "
    "editor (1 = object); see exemplar_mask_marks."
)
MASK_MARKS_TOOLTIP = (
    "What the exemplar mask marks. auto: the object, unless the mask covers most of the exemplar's border (then it "
    "is a cut-out's background, as LoadImage gives it for a transparent PNG, and is inverted). object: 1 = the "
    "object. background: 1 = the background."
)
PREPROCESS_TOOLTIP = (
    "squash: whole exemplar resized to 224x224 ignoring aspect (official, default). center_crop: short side to 224 "
    "then the central square (diffusers; may cut a wide object). pad: long side to 224, short side padded (keeps the "
    "aspect ratio)."
)
