"""Geometry, uploads and result fetching shared by the host tests (the test images themselves: images.py)."""

import numpy as np
import torch
from images import png_bytes

#: source and mask geometry: a 128x128 photo-like image, the region a box on the 8-pixel grid (so the official
#: bilinear, diffusers' nearest and ComfyUI's rounded latent masks coincide)
SIZE = 128
BOX = (32, 96, 40, 88)  # y0, y1, x0, x1


def fetch_tensor(server, entry, node_id) -> torch.Tensor:
    from safetensors.torch import load

    files = entry["outputs"][node_id]["tensors"]
    return load(server.view(files[0]["filename"]))["value"]


def upload_photo_with_box(server, name, h, w, box):
    """Upload an h x w smooth RGBA photo whose alpha is 0 on ``box`` (y0, y1, x0, x1); return the RGB uint8 array."""
    yy, xx = np.mgrid[0:h, 0:w]
    photo = (np.stack([xx / w, yy / h, (xx * yy) / (w * h)], -1) * 255).astype(np.uint8)
    alpha = np.full((h, w), 255, np.uint8)
    y0, y1, x0, x1 = box
    alpha[y0:y1, x0:x1] = 0
    server.upload(name, png_bytes(np.dstack([photo, alpha])))
    return photo


def assert_edited_only_near(out, photo, box, reach):
    """``out`` (H, W, 3) equals ``photo`` bit for bit farther than ``reach`` px from ``box``, and differs inside."""
    src = torch.from_numpy(photo).float() / 255
    y0, y1, x0, x1 = box
    near = torch.zeros(photo.shape[:2], dtype=torch.bool)
    near[max(y0 - reach, 0):y1 + reach, max(x0 - reach, 0):x1 + reach] = True
    assert out.shape == src.shape
    assert torch.equal(out[~near], src[~near])
    assert (out[y0:y1, x0:x1] - src[y0:y1, x0:x1]).abs().mean() > 1e-3
