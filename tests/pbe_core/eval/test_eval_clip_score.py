"""The paper's CLIP score against an independent rebuild of ``region_clip_score.py`` (``eval_oracles``).

The oracle crops with ``np.argwhere`` and torchvision's tensor ``Resize`` (bilinear, no antialias, as torchvision
0.12 did), squashes the exemplar with Pillow, and embeds both with transformers' own ``CLIPModel.from_pretrained``.
Tolerance: 2e-5 on scores in [-100, 100], under 3 float32 steps at 91 (7.6e-6 apart): the features are float32 and
the two batch them differently, which on some CPUs sums in another order (an AMD EPYC with AVX2: 1.6e-6 apart; an
Intel Xeon with AVX-512: about 1e-13). Each deliberately wrong variant moves the mean by more than 1000x that, so
the parity test would fail on any of them; on
the fixture (when written): crop including the last row/column -0.22, antialiased resize +0.025, exemplar
centre-cropped instead of squashed -1.74.
"""

from __future__ import annotations

import eval_oracles
import numpy as np
import pytest
import torch

from pbe_core.eval import cocoee
from pbe_core.eval.clip_features import load_clip
from pbe_core.eval.clip_score import ClipScoreError, clip_scores, official_box

TOL = 2e-5


@pytest.fixture(scope="module")
def scored(tiny):
    rows = cocoee.read_rows(tiny["cocoee"])
    results = [cocoee.result_path(tiny["results"], r.name) for r in rows]
    ours = clip_scores(load_clip(tiny["clip"]), results, [r.ref for r in rows], [r.mask for r in rows], batch_size=5)

    def oracle(inclusive=False, antialias=False, squash=True):
        crops = torch.stack([eval_oracles.official_crop(p, r.mask, inclusive, antialias) for p, r in zip(results, rows, strict=True)])
        refs = torch.stack([eval_oracles.official_exemplar(r.ref, squash) for r in rows])
        return eval_oracles.cosine100(eval_oracles.encode_image(tiny["clip"], crops),
                                      eval_oracles.encode_image(tiny["clip"], refs))

    return ours, oracle


def test_clip_score_matches_the_official_recipe(scored):
    ours, oracle = scored
    expected = oracle()
    assert ours.shape == (12,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    assert np.ptp(ours) > 5, "the fixture's results differ, so the scores must too"


@pytest.mark.parametrize("variant", [{"inclusive": True}, {"antialias": True}, {"squash": False}])
def test_wrong_variants_would_fail_the_parity_check(scored, variant):
    ours, oracle = scored
    wrong = oracle(**variant)
    assert abs(wrong.mean() - ours.mean()) > 1000 * TOL, f"{variant} is indistinguishable: {wrong.mean()} vs {ours.mean()}"


def test_box_is_first_and_last_255_pixel_in_raster_order():
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:6, 3:9] = 255  # rows 2..5, cols 3..8
    assert official_box(mask) == (2, 3, 5, 8)  # used as [2:5, 3:8]: last row and column excluded, as officially
    stray = mask.copy()
    stray[7, 9] = 255  # a stray pixel after the box: in raster order it is the "last" one, as in the official code
    assert official_box(stray) == (2, 3, 7, 9)
    stray[7, 9], stray[7, 0] = 0, 255  # now the last pixel is left of the first: nothing to crop
    with pytest.raises(ClipScoreError, match="empty crop"):
        official_box(stray)


def test_box_errors():
    with pytest.raises(ClipScoreError, match="no pixel equal to 255"):
        official_box(np.full((4, 4), 254, dtype=np.uint8), "m.png")
    one_row = np.zeros((4, 4), dtype=np.uint8)
    one_row[1, :] = 255
    with pytest.raises(ClipScoreError, match="empty crop"):
        official_box(one_row, "m.png")


def test_result_of_the_wrong_size_is_refused(tiny, tmp_path):
    from PIL import Image

    rows = cocoee.read_rows(tiny["cocoee"])[:1]
    small = tmp_path / f"{rows[0].name}.png"
    Image.open(cocoee.result_path(tiny["results"], rows[0].name)).resize((256, 256)).save(small)
    with pytest.raises(ClipScoreError, match=r"is 256x256 but its mask .* is 512x512"):
        clip_scores(load_clip(tiny["clip"]), [small], [rows[0].ref], [rows[0].mask])
