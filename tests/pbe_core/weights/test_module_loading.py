"""``pbe_core.weights.module_loading``: shapes from the layers' declared sizes, completeness from what loading reports, also for
layers that have no weights until loaded (as a newer ComfyUI builds them under dynamic VRAM; the host-level
reproduction is tests/support/newer_host_emulation.py)."""

import pytest
import torch
from torch import nn

from pbe_core.weights.checkpoint import CheckpointError
from pbe_core.weights.module_loading import declared_shapes, load_checked


class WeightlessLinear(nn.Linear):
    """A Linear that keeps only its sizes until ``load_state_dict`` gives it tensors (no shape check, absent weights
    reported missing and zero-filled), the behaviour ``load_checked`` must not be fooled by."""

    def __init__(self, in_features, out_features, bias=True):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.weight, self.bias, self.wants_bias = in_features, out_features, None, None, bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for k, v in state_dict.items():
            name = k[len(prefix):]
            if name in ("weight", "bias"):
                setattr(self, name, nn.Parameter(v, requires_grad=False))
            else:
                unexpected.append(k)
        if self.weight is None:
            self.weight = nn.Parameter(torch.zeros(self.out_features, self.in_features), requires_grad=False)
            missing.append(prefix + "weight")
        if self.wants_bias and self.bias is None:
            self.bias = nn.Parameter(torch.zeros(self.out_features), requires_grad=False)
            missing.append(prefix + "bias")


def _net(linear=nn.Linear):
    return nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.GroupNorm(2, 8), nn.Flatten(), linear(8, 4), nn.LayerNorm(4))


def _file(net_of=nn.Linear):
    return {k: torch.randn(v.shape) for k, v in _net(net_of).state_dict().items()}


@pytest.mark.parametrize("linear", [nn.Linear, WeightlessLinear])
def test_declared_shapes_do_not_need_the_weights(linear):
    shapes = declared_shapes(_net(linear))
    assert shapes["3.weight"] == (4, 8) and shapes["3.bias"] == (4,)
    assert shapes["0.weight"] == (8, 3, 3, 3) and shapes["1.weight"] == (8,) and shapes["4.weight"] == (4,)
    assert set(shapes) == set(_file())


@pytest.mark.parametrize("linear", [nn.Linear, WeightlessLinear])
def test_a_complete_file_becomes_the_weights(linear):
    net, sd = _net(linear), _file()
    load_checked(net, sd, "UNet", "x.safetensors")
    assert all(p.data_ptr() == sd[k].data_ptr() for k, p in net.state_dict().items())


@pytest.mark.parametrize("linear", [nn.Linear, WeightlessLinear])
def test_missing_surplus_and_misshapen_tensors_are_named(linear):
    sd = _file()
    del sd["3.bias"]
    sd["3.extra"] = torch.zeros(1)
    sd["3.weight"] = torch.zeros(8, 4)  # transposed: the weightless layer alone would take it
    with pytest.raises(CheckpointError) as e:
        load_checked(_net(linear), sd, "UNet", "x.safetensors")
    msg = str(e.value)
    assert "x.safetensors: the UNet does not match the architecture its own tensors describe" in msg
    assert "1 tensor(s) missing (e.g. '3.bias')" in msg and "1 it does not use (e.g. '3.extra')" in msg
    assert "1 of the wrong shape (e.g. '3.weight' is (8, 4), expected (4, 8))" in msg


def test_prepare_casts_and_optional_keys_may_be_absent():
    net, sd = _net(), _file()
    del sd["4.bias"]
    load_checked(net, {k: v.half() for k, v in sd.items()}, "VAE", "f", lambda k, v: v.float(),
                 optional=lambda k: k == "4.bias")
    assert net[3].weight.dtype == torch.float32
