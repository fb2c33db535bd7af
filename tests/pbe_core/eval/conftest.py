"""Fixtures of the evaluation's tests (pbe_core/eval)."""

import pytest


@pytest.fixture(scope="module")
def tiny():
    """The tiny COCOEE-format set and tiny random CLIP (``eval_fixtures.tiny_set``: keys ``clip``, ``cocoee``,
    ``results``, ``gmm_train``, ...)."""
    import eval_fixtures  # here, not on top: a Python without torch still reads this file (the stdlib-only run)

    return eval_fixtures.tiny_set()
