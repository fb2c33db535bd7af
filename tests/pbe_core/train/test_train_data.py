"""The training data pipeline: boxes from three formats and the 2-80 % filter, extended-box and Bezier masks,
exemplar augmentation, condition dropping, determinism."""

import json

import numpy as np
import pytest
import torch
from train_toy import toy_images, write_toy_dataset

pytest.importorskip("albumentations")

from pbe_core.exemplar.preprocess import CLIP_MEAN, CLIP_STD  # noqa: E402
from pbe_core.train import masks  # noqa: E402
from pbe_core.train.annotations import AnnotationError, BoxRecord, load_records  # noqa: E402
from pbe_core.train.data import StreamSampler, TrainingSamples  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


# --- annotations ----------------------------------------------------------------------------------------------------
def test_three_formats_give_the_same_boxes(toy):
    coco = load_records("coco", toy["coco"], toy["images"])
    oi = load_records("openimages", toy["openimages"], toy["openimages_images"])
    txt = load_records("txt", toy["txt"], toy["images"])
    n = sum(len(b) for _, _, b in toy_images())
    assert len(coco) == len(oi) == len(txt) == n
    key = lambda r: (r.image.rsplit("/", 1)[-1].split(".")[0], r.box)  # noqa: E731
    for a, b, c in zip(sorted(coco, key=key), sorted(oi, key=key), sorted(txt, key=key), strict=True):
        assert np.allclose(a.box, b.box, atol=1e-12) and a.box == c.box
        assert a.fraction == pytest.approx(b.fraction) and a.fraction == c.fraction


def _coco(tmp_path, boxes, w=200, h=100):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "annotations": [{"id": i, "image_id": 1, "bbox": list(b)} for i, b in enumerate(boxes)]}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    return p


def test_box_filter_keeps_exactly_2_to_80_percent(tmp_path):
    # image 200 x 100 = 20000 px: 2 % = 400 px, 80 % = 16000 px
    boxes = {
        "2% exactly": [10, 10, 20, 20],
        "2% less a pixel": [10, 10, 21, 19],  # 399
        "80% exactly": [0, 0, 160, 100],
        "80% and a pixel": [0, 0, 160.01, 100],  # 16001
        "just over 2%": [0, 0, 20.05, 20],
        "just under 80%": [0, 0, 159.99, 100],
        "whole image": [0, 0, 200, 100],
        "tiny": [5, 5, 3, 3],
    }
    kept = load_records("coco", _coco(tmp_path, boxes.values()), tmp_path)
    got = {round(r.fraction * 20000, 6) for r in kept}
    assert got == {400.0, 16000.0, 401.0, 15999.0}


def test_box_fraction_bounds_from_normalised_coordinates(tmp_path):
    # 0.5 - 0.3 is 0.19999999999999998 in floating point: still exactly 2 % as written
    csv = tmp_path / "b.csv"
    csv.write_text("ImageID,XMin,XMax,YMin,YMax\na,0.3,0.5,0.0,0.1\nb,0.3,0.5,0.0,0.0999\nc,0.1,0.9,0,1\nd,0.1,0.9001,0,1\n")
    kept = load_records("openimages", csv, tmp_path)
    assert sorted(r.image.rsplit("/", 1)[-1] for r in kept) == ["a.jpg", "c.jpg"]


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped(tmp_path):
    kept = load_records("coco", _coco(tmp_path, [[-20, -10, 60, 50], [190, 0, 0, 50]]), tmp_path, 0.0, 1.0)
    assert len(kept) == 1 and kept[0].box == (0.0, 0.0, 40 / 200, 40 / 100)


def test_annotation_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(AnnotationError, match="bad.json"):
        load_records("coco", bad, tmp_path)
    csv = tmp_path / "x.csv"
    csv.write_text("ImageID,XMin\n")
    with pytest.raises(AnnotationError, match="XMax"):
        load_records("openimages", csv, tmp_path)
    with pytest.raises(AnnotationError, match="No box"):
        load_records("coco", _coco(tmp_path, [[0, 0, 200, 100]]), tmp_path)
    (tmp_path / "t").mkdir()
    from PIL import Image

    Image.new("RGB", (10, 10)).save(tmp_path / "q.png")
    (tmp_path / "t" / "q.txt").write_text("1 2 three 4\n")
    with pytest.raises(AnnotationError, match="q.txt, line 1"):
        load_records("txt", tmp_path / "t", tmp_path)


# --- masks ------------------------------------------------------------------------------------------------------------
def _pixel_cover(box, size):
    """Pixels that intersect the box (what 'inside the extended box' means for a raster mask)."""
    x0, y0, x1, y1 = box
    out = np.zeros((size, size), bool)
    out[max(int(np.floor(y0)), 0) : int(np.ceil(y1)), max(int(np.floor(x0)), 0) : int(np.ceil(x1))] = True
    return out


def _random_box(rng, size):
    w, h = rng.uniform(1, size * 0.9, 2)
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return (x0, y0, x0 + w, y0 + h)


@pytest.mark.parametrize("size", [64, 512])
def test_bezier_polygon_lies_in_the_extended_box_and_covers_the_box_centre(size):
    rng = np.random.default_rng(size)
    jitter = 5.0 * size / 512
    for _ in range(300 if size < 512 else 80):
        box = _random_box(rng, size)
        ext = masks.extend_box(box, size, size, rng)
        assert ext[0] <= box[0] and ext[1] <= box[1] and ext[2] >= box[2] and ext[3] >= box[3]
        assert ext[0] >= 0.6 * box[0] - 1e-9 and size - ext[2] >= 0.6 * (size - box[2]) - 1e-9  # <= 40 % of free space
        poly = masks.bezier_polygon(ext, rng, jitter, core=box)
        assert (poly[:, 0] >= ext[0]).all() and (poly[:, 0] <= ext[2]).all()
        assert (poly[:, 1] >= ext[1]).all() and (poly[:, 1] <= ext[3]).all()
        mask = masks.polygon_mask(poly, size, size)
        assert not (mask & ~_pixel_cover(ext, size)).any()
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if min(box[2] - box[0], box[3] - box[1]) >= 4:  # the polygon alone covers the centre pixel
            assert mask[int(cy), int(cx)]
        region, _ = masks.region_mask(ext, box, size, rng, 1.0, jitter)
        assert region[int(cy), int(cx)] and not (region & ~_pixel_cover(ext, size)).any()


def test_rectangle_and_polygon_regions():
    rng = np.random.default_rng(0)
    ext = (10.0, 12.0, 50.0, 40.0)
    rect, is_poly = masks.region_mask(ext, (20, 20, 30, 30), 64, rng, bezier_rate=0.0)
    assert not is_poly and rect.sum() == 40 * 28 and rect[12:40, 10:50].all()
    polys = [masks.region_mask(ext, (20, 20, 30, 30), 64, rng, 0.5, 5.0) for _ in range(400)]
    share = np.mean([p for _, p in polys])
    assert 0.42 < share < 0.58
    # a polygon is not the rectangle: its jittered edges cut and extend the rectangle's border pixels
    shapes = [m for m, p in polys if p]
    assert all(not (m & ~rect).any() for m in shapes)
    assert all(0.75 * rect.sum() < m.sum() <= rect.sum() for m in shapes)
    assert np.mean([m.sum() < rect.sum() for m in shapes]) > 0.9  # all control points jittered outwards: rare


def test_square_crop_contains_the_extended_box():
    rng = np.random.default_rng(1)
    for _ in range(300):
        w, h = rng.integers(40, 300, 2)
        box = _random_box(rng, min(w, h))
        left, top, side = masks.square_crop(box, int(w), int(h), rng)
        assert left <= box[0] and top <= box[1] and left + side >= box[2] and top + side >= box[3]
        assert 0 <= left and left + side <= w and 0 <= top and top + side <= h
    # a box wider than the image is tall: the square sticks out, centred on the box
    left, top, side = masks.square_crop((0, 10, 200, 30), 200, 50, rng)
    assert side == 200 and left == 0 and top == round((10 + 30 - 200) / 2)


# --- samples ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(toy):
    return TrainingSamples(load_records("coco", toy["coco"], toy["images"]), image_size=64, seed=3)


def test_sample_shapes_ranges_and_polarity(dataset):
    for p in range(8):
        s = dataset[p]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["keep"].shape == (1, 64, 64) and set(s["keep"].unique().tolist()) == {0.0, 1.0}
        assert 0 < (s["keep"] == 0).float().mean() < 1  # a region to fill, and context to keep
        assert s["exemplar"].shape == (3, 224, 224) and s["exemplar"].dtype == torch.float32
        assert s["drop"].dtype == torch.bool and s["drop"].shape == ()


def test_exemplar_is_clip_normalised():
    from pbe_core.train.augment import augment_exemplar, exemplar_transform

    t = exemplar_transform(224)
    colour = np.array([200, 30, 90], np.uint8)
    crop = np.broadcast_to(colour, (37, 53, 3)).copy()
    for seed in range(6):
        x = augment_exemplar(t, crop, seed)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        pixels = x * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
        # the middle of a uniform crop keeps its colour through flip, rotation, blur and elastic warp
        assert torch.allclose(pixels[:, 112, 112], torch.tensor(colour / 255.0, dtype=torch.float32), atol=1.5 / 255)


def test_condition_drop_rate_is_20_percent(dataset):
    drops = [dataset.condition_dropped(p) for p in range(2000)]
    assert abs(np.mean(drops) - 0.2) <= 0.03, np.mean(drops)
    assert all(bool(dataset[p]["drop"]) == drops[p] for p in range(6))


def test_samples_are_deterministic_per_position(dataset, toy):
    a, b = dataset[5], dataset[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = dataset[6]
    assert not torch.equal(a["keep"], c["keep"]) or not torch.equal(a["image"], c["image"])
    other = TrainingSamples(dataset.records, image_size=64, seed=4)
    assert not torch.equal(other[5]["exemplar"], a["exemplar"])
    # every record is drawn once per epoch
    n = len(dataset.records)
    assert sorted(dataset.record_index(p) for p in range(n)) == list(range(n))
    assert sorted(dataset.record_index(p) for p in range(n, 2 * n)) == list(range(n))


def test_stream_sampler_gives_processes_disjoint_positions_and_resumes():
    def take(s, k):
        it = iter(s)
        return [next(it) for _ in range(k)]

    r0, r1 = take(StreamSampler(4, 0, 0, 2), 40), take(StreamSampler(4, 0, 1, 2), 40)
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(80))
    assert take(StreamSampler(4, 3, 0, 2), 8) == r0[12:20]


def test_one_box_per_sample(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    recs = [BoxRecord(str(tmp_path / "a.png"), (0.1, 0.1, 0.4, 0.4), 0.09),
            BoxRecord(str(tmp_path / "a.png"), (0.5, 0.5, 0.9, 0.9), 0.16)]
    ds = TrainingSamples(recs, image_size=64)
    assert {ds.record_index(p) for p in range(2)} == {0, 1}
