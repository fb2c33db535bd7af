"""Mixing exemplar contexts: a weighted blend of several exemplars, and an exemplar strength.

Paint by Example conditions on one context token per exemplar, (B, 1, C), and uses a learned unconditional token as
the classifier-free-guidance negative. Both operations here act on those tokens, before sampling:

* **blend**: a convex combination of N exemplar tokens (weights normalised to sum 1) -> one token;
* **strength**: ``uncond + s * (cond - uncond)``: s = 0 gives the unconditional token (no exemplar), s = 1 the
  exemplar, s > 1 extrapolates past it (like a guidance scale applied to the token itself).
"""

from __future__ import annotations

import torch


def parse_weights(text: str, n: int) -> list[float]:
    """'1, 2, 0.5' -> [1.0, 2.0, 0.5]; an empty string means equal weights. Must give n finite values, sum > 0."""
    text = (text or "").strip()
    if not text:
        return [1.0] * n
    try:
        weights = [float(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"Exemplar weights {text!r} are not numbers; write them like '1, 2, 0.5'.") from None
    if len(weights) != n:
        raise ValueError(f"{len(weights)} exemplar weights ({text!r}) for {n} exemplars; give one weight per exemplar.")
    if not all(w == w and abs(w) != float("inf") for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Exemplar weights {text!r} must be finite with a positive sum.")
    return weights


def blend(contexts: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(N, 1, C) exemplar tokens and N weights -> (1, 1, C): the weighted mean (weights normalised to sum 1)."""
    if contexts.shape[0] != len(weights):
        raise ValueError(f"{len(weights)} weights for {contexts.shape[0]} exemplar contexts.")
    w = torch.tensor(weights, dtype=contexts.dtype, device=contexts.device)
    w = w / w.sum()
    return (contexts * w.view(-1, 1, 1)).sum(0, keepdim=True)


def strength(cond: torch.Tensor, uncond: torch.Tensor, s: float) -> torch.Tensor:
    """``uncond + s * (cond - uncond)``; shapes (B, 1, C), uncond broadcast from (1, 1, C) if needed."""
    if s == 1.0:
        return cond
    return uncond + s * (cond - uncond)


def mix(cond: torch.Tensor, uncond: torch.Tensor, weights: str, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exemplar settings of an edit: ``weights`` (text, empty = one result per exemplar) blends the N exemplar
    tokens (N, 1, C) into one; then ``strength`` ``s``. Returns ``(cond, uncond)``, uncond one per result."""
    if weights.strip():
        cond = blend(cond, parse_weights(weights, cond.shape[0]))
        uncond = uncond[:1]
    return strength(cond, uncond, s), uncond
