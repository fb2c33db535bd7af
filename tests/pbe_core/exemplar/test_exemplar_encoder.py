"""The exemplar encoder against diffusers' PaintByExampleImageEncoder (the oracle) on the same weights and pixels."""

import numpy as np
import pbe_fixtures
import pytest
import torch

from pbe_core.exemplar import preprocess as pre
from pbe_core.exemplar.encoder import ExemplarEncoder
from pbe_core.weights.checkpoint import load_checkpoint

# Relative tolerance of the fp32 comparison: max |ours - diffusers| / max |diffusers|.
RTOL = 1e-5


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 224, 224, generator=g)
    return pre.normalize(x)


@pytest.mark.parametrize("layout", ["original.ckpt", "diffusers-hub", "diffusers-bin", "original-fp32.safetensors"])
def test_matches_diffusers_image_encoder(fixture_paths, tiny_modules, pixels, layout):
    _, _, oracle = tiny_modules
    ours = ExemplarEncoder.from_checkpoint(load_checkpoint(fixture_paths[layout]))
    with torch.no_grad():
        expected, uncond = oracle(pixels, return_uncond_vector=True)
        got = ours(pixels)
    assert got.shape == expected.shape == (3, 1, pbe_fixtures.TINY.clip["projection_dim"])
    assert _rel(got, expected) <= RTOL
    assert torch.equal(ours.unconditional(3), uncond.expand(3, -1, -1))


def test_fails_without_the_mapper_or_with_the_projected_embedding(fixture_paths, tiny_modules, pixels):
    """The comparison above can fail: skipping the mapper, or using the wrong CLIP output, is far off."""
    _, _, oracle = tiny_modules
    ours = ExemplarEncoder.from_checkpoint(load_checkpoint(fixture_paths["original.ckpt"]))
    with torch.no_grad():
        expected = oracle(pixels)
        pooled = ours.transformer(pixel_values=pixels).pooler_output[:, None]
        no_mapper = ours.proj_out(ours.final_ln(pooled))
        last_hidden_cls = ours.transformer(pixel_values=pixels).last_hidden_state[:, :1]  # before post-layernorm
        wrong_output = ours.proj_out(ours.final_ln(ours.mapper(last_hidden_cls)))
    assert _rel(no_mapper, expected) > 1e-2
    assert _rel(wrong_output, expected) > 1e-2
    # a CLIPVisionModelWithProjection-style 64-d projected embedding cannot even enter the 128-wide mapper
    assert ours.info.clip_width != pbe_fixtures.TINY.clip["projection_dim"]


def test_value_rows_of_c_qkv_are_the_ones_that_matter(fixture_paths, tiny_modules, pixels):
    """Single-token attention uses only v: scrambling q and k leaves the output unchanged, v does not."""
    ours = ExemplarEncoder.from_checkpoint(load_checkpoint(fixture_paths["original.ckpt"]))
    w = ours.info.clip_width
    with torch.no_grad():
        base = ours(pixels)
        ours.mapper.resblocks[0].attn.c_qkv.weight[: 2 * w] += 1.0
        assert torch.equal(ours(pixels), base)
        ours.mapper.resblocks[0].attn.c_qkv.weight[2 * w :] += 1.0
        assert _rel(ours(pixels), base) > 1e-3


def test_q_and_k_weights_match_the_file(fixture_paths, tiny_modules):
    """q/k never affect an output (docs/design/model.md), so check those tensors against the file directly."""
    _, _, oracle = tiny_modules
    ckpt = load_checkpoint(fixture_paths["diffusers-hub"])
    enc = ExemplarEncoder.from_checkpoint(ckpt)
    for i, block in enumerate(oracle.mapper.blocks):
        q, k, v = enc.mapper.resblocks[i].attn.c_qkv.weight.chunk(3)
        assert torch.equal(q, block.attn1.to_q.weight)
        assert torch.equal(k, block.attn1.to_k.weight)
        assert torch.equal(v, block.attn1.to_v.weight)


# --- preprocessing ----------------------------------------------------------------------------------------------------
def _photo(h, w, seed=0):
    """A smooth but detailed uint8 test image (gradients + noise), as a ComfyUI IMAGE and a PIL image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return torch.from_numpy(arr).float().div(255).unsqueeze(0), Image.fromarray(arr)


@pytest.mark.parametrize("hw", [(300, 451), (451, 300), (224, 224), (97, 500), (1000, 640), (150, 90), (500, 97)])
def test_center_crop_matches_clip_image_processor(hw):
    """diffusers' CLIPImageProcessor with Pillow resizing (transformers 5 names that backend CLIPImageProcessorPil;
    its default there resizes with torchvision): the same pixels; only the normalisation's float rounding differs."""
    import transformers

    image, pil = _photo(*hw)
    processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    proc = processor(**{k: v for k, v in pbe_fixtures.FEATURE_EXTRACTOR_CONFIG.items() if "type" not in k})
    expected = proc(images=pil, return_tensors="pt").pixel_values
    got = pre.preprocess(image, "center_crop")
    assert got.shape == expected.shape == (1, 3, 224, 224)
    std = torch.tensor(pre.CLIP_STD).view(1, 3, 1, 1)
    levels = ((got - expected) * std * 255).abs()
    assert levels.max() <= 1e-3  # fp32 rounding of (x - mean) / std; one 8-bit level would be 1


def _official_squash(pil) -> torch.Tensor:
    """The official preprocessing, independently: PIL ``resize((224, 224))`` bicubic, then [0, 1] (ToTensor)."""
    from PIL import Image

    return torch.from_numpy(np.asarray(pil.convert("RGB").resize((224, 224), Image.BICUBIC)).copy()).float().div(255)


@pytest.mark.parametrize("hw", [(300, 451), (97, 500), (640, 640), (640, 97), (50, 60), (60, 400), (400, 60), (230, 100)])
def test_squash_matches_pil_bicubic(hw):
    image, pil = _photo(*hw, seed=3)
    assert torch.equal(pre.squash(image)[0].movedim(0, -1), _official_squash(pil))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket", "coins", "hubble_deep_field"])
def test_squash_equals_the_official_preprocessing_on_photos(name):
    """Real photos of odd sizes (chelsea 451x300, coffee 600x400, rocket 427x640, coins 384x303 grey, hubble 1000x872):
    bit for bit the official pixels, and the normalised tensor equal to the official Normalize to fp32 rounding."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    arr = getattr(skdata, name)()
    pil = Image.fromarray(arr)
    image = torch.from_numpy(arr).float().div(255)
    image = image.unsqueeze(-1) if image.ndim == 2 else image
    official = _official_squash(pil)
    assert torch.equal(pre.squash(image.unsqueeze(0))[0].movedim(0, -1), official)
    mean, std = torch.tensor(pre.CLIP_MEAN), torch.tensor(pre.CLIP_STD)
    normalised = ((official - mean) / std).movedim(-1, 0)
    assert (pre.preprocess(image.unsqueeze(0), "squash")[0] - normalised).abs().max() <= 1e-6


def test_squash_keeps_orientation():
    """A wide exemplar with a red left half: after squashing the left half is still red (no transposition)."""
    image = torch.zeros(1, 100, 300, 3)
    image[:, :, :150, 0] = 1.0
    out = pre.squash(image)[0]
    assert out[0, :, :100].mean() > 0.99 and out[0, :, 124:].mean() < 0.01


def test_grey_and_rgba_exemplars():
    grey = torch.rand(2, 50, 60, 1)
    rgba = torch.cat([grey.expand(-1, -1, -1, 3), torch.ones(2, 50, 60, 1)], -1)
    assert torch.equal(pre.preprocess(grey), pre.preprocess(rgba))


def test_bad_exemplars_name_the_problem():
    with pytest.raises(ValueError, match="NaN or infinite"):
        pre.preprocess(torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match="expected a ComfyUI IMAGE"):
        pre.preprocess(torch.rand(3, 8, 8, 5))
    with pytest.raises(ValueError, match="Unknown exemplar preprocessing 'crop'"):
        pre.preprocess(torch.rand(1, 8, 8, 3), "crop")


@pytest.mark.parametrize("mode", pre.BATCH_MODES)
def test_a_batch_of_exemplars_encodes_as_each_exemplar_alone(mode):
    """Exemplar Batch: photos of different sizes in one batch give the encoder, in every preprocessing mode, exactly the
    pixels each photo gives alone in the batch's mode (the official PIL squash is the oracle for 'squash')."""
    photos = [_photo(300, 451, seed=1), _photo(97, 500, seed=2), _photo(640, 640, seed=3)]
    batch = pre.batch_exemplars([image for image, _ in photos], mode)
    assert batch.shape == (3, 224, 224, 3)
    alone = torch.cat([pre.preprocess(image, mode) for image, _ in photos])
    for encoder_mode in pre.PREPROCESS_MODES:
        assert torch.equal(pre.preprocess(batch, encoder_mode), alone), (mode, encoder_mode)
    if mode == "squash":
        for got, (_, pil) in zip(batch, photos, strict=True):
            assert torch.equal(got, _official_squash(pil))
    # what the template did before (torch's bicubic at 224, as ComfyUI's ImageScale): not the same pixels
    torch_bicubic = torch.nn.functional.interpolate(photos[0][0].movedim(-1, 1), (224, 224), mode="bicubic").clamp(0, 1)
    assert not torch.equal(pre.preprocess(torch_bicubic.movedim(1, -1), mode), alone[:1])


def test_exemplar_batch_refuses_pad():
    with pytest.raises(ValueError, match="Unknown exemplar batch mode 'pad'; choose one of squash, center_crop"):
        pre.batch_exemplars([torch.rand(1, 8, 8, 3)], "pad")


def test_exemplar_mask_cuts_out_and_crops():
    image = torch.rand(1, 100, 120, 3)
    mask = torch.zeros(1, 100, 120)
    mask[:, 40:60, 30:50] = 1
    (cut,) = pre.apply_exemplar_mask(image, mask, pad=10)
    assert cut.shape == (1, 40, 40, 3)
    assert torch.equal(cut[0, 10:30, 10:30], image[0, 40:60, 30:50])
    assert torch.allclose(cut[0, 0, 0], torch.tensor(pre.CLIP_MEAN))
    with pytest.raises(ValueError, match="is empty"):
        pre.apply_exemplar_mask(image, torch.zeros(1, 100, 120))
    with pytest.raises(ValueError, match="Exemplar mask is 60x50 but the exemplar image is 120x100"):
        pre.apply_exemplar_mask(image, torch.ones(1, 50, 60))


def test_exemplar_mask_of_a_cut_out_and_of_a_painted_object_both_give_the_object():
    """LoadImage of a cut-out PNG gives 1 where the PNG is transparent (the background); the mask editor gives 1 where
    the object is painted. 'auto' takes both to the object; 'object' / 'background' say it outright."""
    h, w = 80, 60
    obj = torch.zeros(1, h, w)
    obj[:, 20:60, 15:45] = 1  # the object, off the border
    cut_out = 1.0 - obj  # LoadImage's MASK of the cut-out: 1 - alpha
    assert torch.equal(pre.object_mask(obj, "auto"), obj)
    assert torch.equal(pre.object_mask(cut_out, "auto"), obj)
    assert torch.equal(pre.object_mask(cut_out, "background"), obj)
    assert torch.equal(pre.object_mask(cut_out, "object"), cut_out)  # said outright: taken as it is
    both = torch.cat([obj, cut_out])
    assert torch.equal(pre.object_mask(both, "auto"), torch.cat([obj, obj]))
    # an exemplar whose object fills it, border included, stays as it is (nothing left to call background)
    full = torch.ones(1, h, w)
    assert torch.equal(pre.object_mask(full, "auto"), full)
