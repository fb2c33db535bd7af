"""Several exemplars' mixing (pbe_core.exemplar.mixing): the weighted blend, the strength against the unconditional
vector, and the weights as the node reads them."""

import pytest
import torch

from pbe_core.exemplar import mixing as mix


def test_blend_and_strength():
    c = torch.randn(3, 1, 8)
    u = torch.randn(1, 1, 8)
    assert torch.allclose(mix.blend(c, [1, 0, 0]), c[:1])
    assert torch.allclose(mix.blend(c, [1, 1, 2]), (c[0] + c[1] + 2 * c[2]).unsqueeze(0) / 4)
    assert torch.allclose(mix.strength(c, u, 0.0), u.expand_as(c))
    assert torch.equal(mix.strength(c, u, 1.0), c)
    assert torch.allclose(mix.strength(c, u, 2.0), 2 * c - u)
    assert mix.parse_weights("", 3) == [1.0, 1.0, 1.0]
    assert mix.parse_weights("1; 2.5, 3", 3) == [1.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="2 exemplar weights"):
        mix.parse_weights("1, 2", 3)
    with pytest.raises(ValueError, match="not numbers"):
        mix.parse_weights("a, b", 2)
    with pytest.raises(ValueError, match="positive sum"):
        mix.parse_weights("1, -1", 2)
