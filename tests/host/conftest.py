"""Fixtures for the host tests: one headless ComfyUI for the session, with the pack, the probe pack and every tiny
fixture checkpoint layout; test images uploaded through the API; an exemplar photo on disk for the headless client's
runs; and ComfyUI imported in-process with the pack, for the tests that call the host's and the pack's code directly."""

from pathlib import Path

import numpy as np
import pbe_fixtures
import pytest
import torch
from comfy_host import temporary_server
from comfy_inprocess import host_device
from host_util import BOX, SIZE
from images import make_photo, png_bytes

HERE = Path(__file__).resolve().parent

@pytest.fixture(scope="session")
def comfy_server():
    paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
    with temporary_server(models=paths, extra_packs={"pbe_test_probe": HERE.parent / "support" / "host_probe"}) as server:
        yield server


@pytest.fixture(scope="session")
def images(comfy_server):
    """Uploads: 'source.png' (RGBA, alpha 0 = region), 'exemplar.png' (224x224), 'exemplar2.png'. Returns arrays."""
    src = make_photo(SIZE, SIZE, 0)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    y0, y1, x0, x1 = BOX
    alpha[y0:y1, x0:x1] = 0
    rgba = np.dstack([src, alpha])
    ex1 = make_photo(224, 224, 1)
    ex2 = 255 - make_photo(224, 224, 2)
    for name, arr in (("source.png", rgba), ("source_rgb.png", src), ("exemplar.png", ex1), ("exemplar2.png", ex2)):
        comfy_server.upload(name, png_bytes(arr))
    region = np.zeros((SIZE, SIZE), np.float32)
    region[y0:y1, x0:x1] = 1
    return {"source": src, "region": region, "exemplar": ex1, "exemplar2": ex2}


@pytest.fixture
def exemplar(tmp_path):
    """A 224x224 photo-like JPEG in the test's folder: the exemplar the client's runs (single server and fleet) give."""
    path = tmp_path / "exemplar.jpg"
    from PIL import Image

    Image.fromarray(make_photo(224, 224, 7)).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def host():
    """ComfyUI imported in-process with the pack loaded: the host's and the pack's modules the in-process tests call.

    Where ComfyUI runs on the GPU (``host_device``), it checks that it does and turns TF32 off: the in-process tests
    compare at fp32 precision, and TF32 rounds fp32 matmuls and convolutions to 10 mantissa bits.
    """
    from comfy_inprocess import import_host, import_pack, pack_module

    mm = import_host()
    import_pack()
    if host_device() == "cuda":
        if not torch.cuda.is_available() or mm.get_torch_device().type != "cuda":
            pytest.fail(f"PBE_HOST_DEVICE=cuda but ComfyUI runs on {mm.get_torch_device()} (torch "
                        f"{torch.__version__}, CUDA available: {torch.cuda.is_available()})")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from comfy_extras import nodes_freelunch, nodes_model_advanced, nodes_pag, nodes_sag

    import nodes as host_nodes  # ComfyUI's nodes.py (import_host put its folder first)

    class Host:
        model_management = mm
        device = mm.get_torch_device()
        ksampler = host_nodes.KSampler
        freelunch, pag, sag, model_advanced = nodes_freelunch, nodes_pag, nodes_sag, nodes_model_advanced
        model_type = pack_module("nodes.host.model_type")
        encoder = pack_module("nodes.host.encoder")
        sampler = pack_module("nodes.sampler")
        conditioning = pack_module("nodes.conditioning")
        loader = pack_module("nodes.loader")
        sta = pack_module("nodes.host.single_token_attention")
        shared = pack_module("nodes.host.shared_cfg_prefix")
        attention_choice = pack_module("nodes.host.attention_choice")
        checkpoint = pack_module("pbe_core.weights.checkpoint")

    return Host
