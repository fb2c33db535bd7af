"""The edit without the host (pbe_core.edit.plan): the plan's checks, windows and regions, and the paste-back.

The host's part (encode, sample, decode) is replaced by a known edit of each window's pixels, so every number here is
the engine's own: what reaches the model, and what comes back.
"""

import pytest
import torch
import torch.nn.functional as F

from pbe_core.edit.conditioning import keep_mask, latent_keep_mask
from pbe_core.edit.plan import EditSettings, paste_back, plan_edit, visible_region
from pbe_core.photo import crop_stitch, mask_ops


def _photo(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, 3, generator=g)


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, h, w)
    m[:, y0:y1, x0:x1] = 1
    return m


def _invert(plan):
    return [1.0 - w.image for w in plan.windows]


# --- checks at the entry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        (EditSettings(working_size=500), r"working_size=500 must be 0 \(edit the whole image\) or a multiple of 8.*use 504"),
        (EditSettings(working_size=40), r"of at least 64; use 64"),
        (EditSettings(window_shape="round"), r"window_shape must be one of square, mask_aspect; got 'round'"),
        (EditSettings(context_margin=-1), r"context_margin=-1 must be a fraction >= 0"),
        (EditSettings(context_margin=float("nan")), r"context_margin=nan"),
        (EditSettings(mask_grow=2.5), r"mask_grow must be a whole number, not 2\.5"),
        (EditSettings(mask_feather=-3), r"mask_feather=-3: .*feather within 0\.\.256"),
        (EditSettings(mask_grow=-300), r"mask_grow=-300"),
    ],
)  # fmt: skip
def test_settings_are_checked_once_at_the_entry(settings, message):
    with pytest.raises(ValueError, match=message):
        plan_edit(_photo(64, 64), _box(64, 64, 10, 30, 10, 30), settings)


def test_inputs_are_checked_at_the_entry():
    image = _photo(48, 40)
    with pytest.raises(ValueError, match="Mask contains NaN"):
        plan_edit(image, torch.full((1, 48, 40), float("nan")))
    with pytest.raises(ValueError, match="Mask is 48x40 but the image is 40x48"):
        plan_edit(image, torch.ones(1, 40, 48))
    with pytest.raises(ValueError, match=r"Batch sizes do not match \(source: 2, mask: 3, exemplar: 1\)"):
        plan_edit(image.expand(2, -1, -1, -1), torch.ones(3, 48, 40))
    with pytest.raises(ValueError, match="shrinks the mask to nothing"):
        plan_edit(image, _box(48, 40, 10, 14, 10, 14), EditSettings(mask_grow=-3))


# --- what the model edits ---------------------------------------------------------------------------------------------
def test_a_source_at_the_working_size_is_edited_whole():
    image, mask = _photo(512, 384), _box(512, 384, 100, 200, 50, 150)
    plan = plan_edit(image, mask)
    (w,) = plan.windows
    assert w.crop is None and torch.equal(w.image, image) and torch.equal(w.region, mask)


def test_odd_sides_are_padded_with_kept_context_and_cropped_back():
    image, mask = _photo(53, 77), _box(53, 77, 10, 41, 20, 61)
    plan = plan_edit(image, mask, EditSettings(working_size=0, mask_feather=0))
    (w,) = plan.windows
    assert w.image.shape == (1, 56, 80, 3) and torch.equal(w.image[:, :53, :77], image)
    assert torch.equal(w.image[:, 53:, :77], image[:, 52:53].expand(-1, 3, -1, -1))  # edge pixels repeated
    assert not w.region[:, 53:].any() and not w.region[:, :, 77:].any()  # the padding is kept, never repainted
    result = paste_back(plan, _invert(plan))
    assert result.shape == image.shape
    inside = mask[0].bool()
    assert torch.equal(result[0][inside], 1.0 - image[0][inside]) and torch.equal(result[0][~inside], image[0][~inside])


def test_windows_are_the_crop_and_stitch_plan():
    """Two far-apart regions of a large photo: one window each, as crop_stitch.plan_windows plans them for the
    feathered mask; one_window gives a single window around both (Crop for Edit)."""
    h, w = 1200, 1600
    mask = _box(h, w, 100, 160, 100, 180) + _box(h, w, 900, 1000, 1300, 1450)
    image = _photo(h, w)
    plan = plan_edit(image, mask, EditSettings(mask_feather=8))
    expected = crop_stitch.plan_windows((h, w), mask_ops.connected_regions(mask_ops.feather_mask(mask, 8)),
                                        margin=0.25, shape="square", working_size=512)  # fmt: skip
    assert [win.crop for win in plan.windows] == expected and len(expected) == 2
    for win in plan.windows:
        assert torch.equal(win.image, crop_stitch.crop_to_window(image, win.crop))
        assert max(win.image.shape[1:3]) == 512 and win.region.any()
    (one,) = plan_edit(image, mask, EditSettings(mask_feather=8, one_window=True)).windows
    assert one.crop.box[0] <= 100 and one.crop.box[2] >= 1000


def test_paste_back_is_bit_identical_outside_the_feather():
    image, mask = _photo(900, 700, 1), _box(900, 700, 300, 420, 200, 330)
    plan = plan_edit(image, mask, EditSettings(mask_feather=12))
    result = paste_back(plan, _invert(plan))
    outside = plan.paste[0] == 0
    assert torch.equal(result[0][outside], image[0][outside])
    assert (result[0][mask[0].bool()] - image[0][mask[0].bool()]).abs().mean() > 0.2


# --- no edit silently does nothing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw, width", [((872, 1000), 1), ((872, 1000), 4), ((1999, 3001), 2)])
def test_a_thin_stroke_reaches_the_model_and_the_result(hw, width):
    """A stroke 1-4 px wide on a large photo: scaled to the working size it falls below 0.5 everywhere, and a
    stroke under 8 px covers no latent cell. The model still gets a region it can see (whole latent cells), and the
    stroke's pixels come back edited."""
    h, w = hw
    image = _photo(h, w, 2)
    mask = torch.zeros(1, h, w)
    mask[:, h // 3 : h // 3 + 300, w // 2 : w // 2 + width] = 1  # a vertical stroke
    plan = plan_edit(image, mask, EditSettings(mask_feather=4))
    assert len(plan.windows) == 1
    (win,) = plan.windows
    latent = latent_keep_mask(keep_mask(win.region), (win.region.shape[1] // 8, win.region.shape[2] // 8))
    assert bool((latent <= 0.5).any()), "the model would see no region"
    result = paste_back(plan, _invert(plan))
    stroke = mask[0].bool()
    assert (result[0][stroke] - image[0][stroke]).abs().mean() > 0.1


def test_visible_region_only_changes_what_the_model_could_not_see():
    region = torch.zeros(2, 64, 64)
    region[0, 8:40, 8:40] = 1  # a box: seen as it is
    region[1, 10:30, 17] = 1  # a 1-px line the latent grid's sampling points miss (they lie between 19 and 20)
    out = visible_region(region)
    assert torch.equal(out[0], region[0])
    cells = F.max_pool2d(region[1:2].unsqueeze(1), 8)
    assert torch.equal(out[1], F.interpolate(cells, scale_factor=8).squeeze())
    assert out[1].sum() == 8 * 8 * 3 and (out[1] >= region[1]).all()


def test_an_edit_that_changes_nothing_is_refused():
    image, mask = _photo(64, 64), _box(64, 64, 16, 48, 16, 48)
    plan = plan_edit(image, mask, EditSettings(working_size=0, mask_feather=0))
    with pytest.raises(ValueError, match="The edit changed no pixel of the source"):
        paste_back(plan, [w.image for w in plan.windows])


def test_paste_back_checks_what_the_host_hands_back():
    image, mask = _photo(64, 64), _box(64, 64, 16, 48, 16, 48)
    plan = plan_edit(image, mask, EditSettings(working_size=0))
    with pytest.raises(ValueError, match="1 edits for 1 windows|2 edits for 1 windows"):
        paste_back(plan, _invert(plan) * 2)
    with pytest.raises(ValueError, match=r"The edit is 32x32 .* but its window is 64x64"):
        paste_back(plan, [torch.zeros(1, 32, 32, 3)])
    with pytest.raises(ValueError, match="NaN or infinite values"):
        paste_back(plan, [torch.full((1, 64, 64, 3), float("nan"))])


def test_batches_broadcast_to_the_number_of_exemplars():
    image, mask = _photo(64, 64), _box(64, 64, 16, 48, 16, 48)
    plan = plan_edit(image, mask, EditSettings(working_size=0), batch=3)
    assert plan.source.shape[0] == 3 and plan.windows[0].image.shape[0] == 3
    edits = [torch.stack([torch.full((64, 64, 3), v) for v in (0.0, 0.5, 1.0)])]
    result = paste_back(plan, edits)
    inside = mask[0].bool()
    assert [float(result[i][inside].mean()) for i in range(3)] == pytest.approx([0.0, 0.5, 1.0])


def test_the_same_plan_serves_crop_for_edit_and_its_stitch():
    """Crop for Edit's outputs are the plan's one window, and Stitch Edit's paste-back consumes exactly that plan:
    the round trip of an unedited crop only moves pixels inside the feathered mask."""
    image, mask = _photo(600, 800, 3), _box(600, 800, 250, 330, 300, 420)
    plan = plan_edit(image, mask, EditSettings(mask_feather=8, one_window=True))
    (win,) = plan.windows
    result = paste_back(plan, [(win.image + 0.1).clamp(0, 1)])
    outside = plan.paste[0] == 0
    assert torch.equal(result[0][outside], image[0][outside])
