"""Full-size Paint-by-Example weights (1.31 B parameters, random, seeded) in both layouts, for the benchmarks.

Nothing is downloaded: ``tests/support/pbe_fixtures.build_modules(FULL, seed)`` builds the real architecture with
diffusers' and transformers' own classes and fills every parameter from a seeded generator. The *same* tensors are
written as

* ``diffusers/``                a diffusers folder (``unet/``, ``vae/``, ``image_encoder/``, ``scheduler/``,
                                ``feature_extractor/``), safetensors, fp32: what ``PaintByExamplePipeline`` loads;
* ``original-fp32.safetensors`` the original single-file layout (what this pack's loader reads), written tensor by
                                tensor with the pack's own key maps (``pbe_core.weights.layouts``) and streaming writer.

Each file is ~5.2 GB; they live in the git-ignored ``benchmarks/.weights/`` and are reused when the stamp matches.
Run as ``python benchmarks/weights.py [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

log = logging.getLogger("pbe.bench.weights")

DEFAULT_DIR = HERE / ".weights"
SEED = 0


def _stamp(seed: int) -> str:
    import pbe_fixtures

    return json.dumps({"spec": repr(pbe_fixtures.FULL), "seed": seed, "version": 1})


def ensure_weights(root: Path = DEFAULT_DIR, seed: int = SEED) -> dict[str, Path]:
    """Write (once) the full-size model in both layouts under ``root``; return ``{"diffusers": .., "original": ..}``."""
    import pbe_fixtures
    import torch

    from pbe_core.weights import layouts
    from pbe_core.weights.safetensors_writer import write_safetensors

    root = Path(root)
    paths = {"diffusers": root / "diffusers", "original": root / "original-fp32.safetensors"}
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == _stamp(seed) and all(p.exists() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    log.info("building the full-size model (1.31 B parameters, seed %d) ...", seed)
    unet, vae, encoder = pbe_fixtures.build_modules(pbe_fixtures.FULL, seed)
    n = sum(p.numel() for m in (unet, vae, encoder) for p in m.parameters())
    log.info("%d parameters; writing %s", n, paths["diffusers"])
    pbe_fixtures.write_diffusers_folder(paths["diffusers"], unet, vae, encoder, fmt="safetensors")
    gc.collect()
    # The original layout from the same modules, as pbe_fixtures.original_state_dict builds it but without its
    # final copy of every tensor (5.2 GB); the streaming writer reads one tensor at a time.
    log.info("writing %s", paths["original"])
    sd = {}
    sd.update(layouts.add_prefix(layouts.unet_from_diffusers(unet.state_dict()), layouts.UNET_PREFIX))
    sd.update(layouts.add_prefix(layouts.vae_from_diffusers(vae.state_dict()), layouts.VAE_PREFIX))
    enc = encoder.state_dict()
    sd.update(layouts.add_prefix(layouts.clip_with_vision_model_level(layouts.split_prefix(enc, "model.")), layouts.CLIP_PREFIX))
    sd.update(layouts.add_prefix(layouts.mapper_from_diffusers(layouts.split_prefix(enc, "mapper.")), layouts.MAPPER_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(enc, "final_layer_norm."), layouts.FINAL_LN_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(enc, "proj_out."), layouts.PROJ_OUT_PREFIX))
    sd[layouts.UNCOND_KEY] = enc["uncond_vector"]
    sd.update(pbe_fixtures.schedule_buffers())
    write_safetensors(sd, paths["original"], torch.float32, {"format": "pt"})
    marker.write_text(_stamp(seed))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name, p in ensure_weights(args.dir, args.seed).items():
        sys.stdout.write(f"{name}: {p}\n")


if __name__ == "__main__":
    main()
