"""COCOEE evaluation of Paint by Example: the paper's FID, QS and CLIP score, computed as the official tools do.

``python -m pbe_core.eval score OUT COCOEE_DIR --clip DIR [--gmm FILE] [--fid-reference DIR]`` scores a folder of
results; ``python -m pbe_core.eval gmm-convert IN OUT.npz`` turns the official QS pickle into a pickle-free ``.npz``.
The design, the official facts each step follows and the manifest format are in ``docs/evaluation.md``.

Modules, one job each: :mod:`.cocoee` (the benchmark's files), :mod:`.manifest` (what generation records),
:mod:`.clip_features` (CLIP ViT-B/32 loaded offline, the official preprocessing), :mod:`.fid` (the Fréchet distance),
:mod:`.fid_reference` (reference statistics and their cache), :mod:`.gmm_pickle` (the QS pickle read safely),
:mod:`.gmm` (the mixture as arrays, its log-likelihood), :mod:`.clip_score`, :mod:`.inception_fid` (optional),
:mod:`.bootstrap`, :mod:`.figures`, :mod:`.report`, :mod:`.score` (the ``score`` command's steps).

This package is an entry point (needs the ``eval`` extra: scipy, Pillow; scikit-learn is not needed); the ComfyUI
nodes never import it, and importing it imports nothing heavy.
"""
