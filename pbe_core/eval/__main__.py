"""``python -m pbe_core.eval COMMAND ...``: one subcommand per step of a COCOEE evaluation.

``generate`` (:mod:`.generate`: the edits, through ComfyUI), ``score`` (:mod:`.score`) and ``gmm-convert``; each is a
function that adds its arguments to a sub-parser and a function that runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..client.errors import ClientError

log = logging.getLogger("pbe_core.eval")

#: the 'eval' extra: what scoring imports beyond the pack's own requirements
EVAL_PACKAGES = ("scipy", "pillow")


def _add_score(p: argparse.ArgumentParser) -> None:
    from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED

    p.add_argument("out", type=Path, help="output folder: holds results/{id:012d}.png (or the PNGs themselves); the "
                   "report is written here")
    p.add_argument("cocoee", type=Path, help="COCOEE folder (id_list.npy, GT_3500/, Ref_3500/, Mask_bbox_3500/)")
    p.add_argument("--clip", type=Path, required=True, help="folder of openai/clip-vit-base-patch32 as transformers "
                   "saves it (config.json, model.safetensors)")
    p.add_argument("--gmm", type=Path, help="QS model: the official coco2017_gmm_k20 pickle (read safely) or its .npz")
    p.add_argument("--fid-reference", type=Path, help="folder of 512x512 COCO test2017 crops, or a .npz of mu/sigma")
    p.add_argument("--inception-weights", type=Path, help="optional: InceptionV3 FID weights for a standard FID too")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device for CLIP (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="CLIP precision (the official tools ran fp16 on CUDA; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=50, help="images per CLIP batch (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, dest="resamples",
                   help="bootstrap resamples for the 95%% intervals (default %(default)s; 0: none)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default %(default)s)")
    p.add_argument("--allow-missing", action="store_true", help="score the results present even if some are missing")
    p.add_argument("--grid-rows", type=int, default=8, help="rows in sample_grid.png (default %(default)s)")


def _run_score(args: argparse.Namespace) -> int:
    from .score import ScoreOptions, score

    fields = ScoreOptions.__dataclass_fields__
    score(ScoreOptions(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _add_gmm_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="the GaussianMixture pickle (e.g. coco2017_gmm_k20); nothing in it runs")
    p.add_argument("target", type=Path, help="the .npz to write (weights_, means_, precisions_cholesky_, covariance_type)")


def _run_gmm_convert(args: argparse.Namespace) -> int:
    from .clip_features import sha256_of
    from .gmm import read_gmm, save_gmm_npz

    params = read_gmm(args.source)
    if args.target.suffix != ".npz":
        raise ValueError(f"the target {args.target} must end in .npz (numpy.savez adds the suffix otherwise)")
    save_gmm_npz(params, args.target)
    log.info("%s (sha256 %s): %d %s components over %d-d features -> %s (sha256 %s)", args.source,
             sha256_of(args.source), params.n_components, params.covariance_type, params.dim, args.target,
             sha256_of(args.target))
    return 0


def _add_generate(p: argparse.ArgumentParser) -> None:
    from .generate import add_arguments

    add_arguments(p)


def _run_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    return generate(args)


#: name -> (add arguments, run, help)
COMMANDS = {
    "generate": (_add_generate, _run_generate, "edit the COCOEE rows through ComfyUI (the official protocol by default)"),
    "score": (_add_score, _run_score, "compute FID, QS and CLIP score of a results folder and write the report"),
    "gmm-convert": (_add_gmm_convert, _run_gmm_convert, "turn the QS GaussianMixture pickle into a pickle-free .npz"),
}


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pbe_core.eval", description="COCOEE evaluation of Paint by Example "
                                     "(the paper's FID, QS and CLIP score). See docs/evaluation.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, _, help_text) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command][1](args)
    except ImportError as e:
        log.error("error: %s. Scoring needs the 'eval' extra: pip install %s", e, " ".join(EVAL_PACKAGES))
        return 2
    except ClientError as e:  # generate: the client's own errors name the fix
        log.error("error: %s", e)
        return 1
    except (ValueError, OSError) as e:  # every error of this package names the file and the fix
        log.error("error: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
