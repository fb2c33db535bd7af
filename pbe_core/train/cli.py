"""``python -m pbe_core.train [CONFIG] [key=value ...]``: fine-tune Paint by Example (see the README, "Fine-tuning").

On several GPUs or machines, start the same command through accelerate: ``accelerate launch --multi_gpu
--num_processes 8 -m pbe_core.train CONFIG`` (the README gives the multi-machine flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, TrainConfig, build_config

log = logging.getLogger(__name__)

#: the 'train' list of pyproject.toml's [project.optional-dependencies]
TRAIN_PACKAGES = ("accelerate>=1.0", "albumentations>=2.0", "diffusers>=0.30", "pillow")
EXTRA_HINT = "Training needs the 'train' extra of pyproject.toml: pip install " + " ".join(f"'{p}'" for p in TRAIN_PACKAGES)


def _parser() -> argparse.ArgumentParser:
    settings = ", ".join(TrainConfig.__dataclass_fields__)
    p = argparse.ArgumentParser(
        prog="python -m pbe_core.train",
        description="Fine-tune Paint by Example with the paper's self-supervised scheme, from SD-1.x or from a "
        "Paint-by-Example checkpoint. The result is one original-layout .safetensors the pack's loader reads.",
        epilog=f"Settings (file keys and key=value overrides): {settings}.",
    )
    p.add_argument("config", nargs="?", help="TOML or JSON config file (optional: everything can be key=value)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting, e.g. max_steps=500")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # no file, only overrides
        config, overrides = None, [config, *overrides]
    if args.print_config:
        try:
            cfg = build_config(config, overrides, validate=False)
        except ConfigError as e:
            log.error("error: %s", e)
            return 2
        sys.stdout.write(json.dumps(cfg.as_dict(), indent=2) + "\n")
        try:
            cfg.validate()
        except ConfigError as e:  # the values are shown all the same: that is what --print-config is for
            log.warning("not ready to train: %s", e)
        return 0
    try:
        cfg = build_config(config, overrides).check_paths()
    except ConfigError as e:
        log.error("error: %s", e)
        return 2
    try:
        from .loop import train
    except ImportError as e:  # pragma: no cover - exercised by the no-extra test in a subprocess
        log.error("error: %s. %s", e, EXTRA_HINT)
        return 2
    try:
        train(cfg)
    except ImportError as e:
        log.error("error: %s. %s", e, EXTRA_HINT)
        return 2
    except (ValueError, FileNotFoundError) as e:
        log.error("error: %s", e)
        return 1
    return 0
