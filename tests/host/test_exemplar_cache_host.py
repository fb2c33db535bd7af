"""Through the HTTP API: the next prompt that only changes the seed does not encode the exemplar again.

ComfyUI keeps PBE_LoadModel's outputs between prompts whose loader inputs are unchanged, so the same PBE_ENCODER
object serves both prompts, and it remembers its recent encodings. The pack logs each real encoding."""

import numpy as np
import pytest
import torch
from host_prompts import one_node_prompt, run_ok, uid
from host_util import fetch_tensor
from images import make_photo, png_bytes

pytestmark = pytest.mark.host

ENCODING = "Paint by Example: encoding"


def test_seed_change_in_the_next_prompt_reuses_the_encoding(comfy_server, images):
    name = f"exemplar-{uid()}.png"  # never seen by this server: its first use must encode it
    comfy_server.upload(name, png_bytes(255 - make_photo(160, 128, int(np.random.default_rng().integers(1 << 30)))))
    outs = []
    before = comfy_server.log().count(ENCODING)
    for i, seed in enumerate((11, 12, 13)):
        p = one_node_prompt("original-fp32.safetensors", steps=2, seed=seed)
        p["ex"]["inputs"]["image"] = name
        outs.append(fetch_tensor(comfy_server, run_ok(comfy_server, p), "save"))
        assert comfy_server.log().count(ENCODING) - before == 1, f"prompt {i}: the exemplar was encoded again"
    assert not torch.equal(outs[0], outs[1])  # the seed did change the result
