"""Test images and result fetching shared by the host tests."""

import io

import numpy as np
import torch

#: source and mask geometry: a 128x128 photo-like image, the region a box on the 8-pixel grid (so the official
#: bilinear, diffusers' nearest and ComfyUI's rounded latent masks coincide)
SIZE = 128
BOX = (32, 96, 40, 88)  # y0, y1, x0, x1


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_photo(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def fetch_tensor(server, entry, node_id) -> torch.Tensor:
    from safetensors.torch import load

    files = entry["outputs"][node_id]["tensors"]
    return load(server.view(files[0]["filename"]))["value"]
