"""Training settings: a TOML (or JSON) file plus ``key=value`` overrides from the command line.

The file may be flat or grouped in tables (``[model]``, ``[data]``, ``[optim]``, ``[output]``); table names are only
for the reader, every key is unique. Defaults are the paper's (docs/design/training.md) where it states one.
Standard library only, so ``python -m pbe_core.train --help`` works without the training extra.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names it and the value it got."""


DATA_FORMATS = ("coco", "openimages", "txt")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SAVE_DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class TrainConfig:
    # --- model ---------------------------------------------------------------------------------------------------------
    #: an SD-1.x checkpoint (start as the paper) or any Paint-by-Example checkpoint the pack's loader reads
    init_from: str = ""
    #: CLIP ViT-L/14 vision weights (transformers naming, .safetensors/.bin); required when init_from is SD-1.x
    clip_weights: str = ""
    #: blocks of the fresh exemplar mapper (SD-1.x start only; the paper's is 5)
    mapper_depth: int = 5
    #: attention heads of the UNet (SD-1: 8); not stored in checkpoints
    unet_heads: int = 8
    # --- data ----------------------------------------------------------------------------------------------------------
    data_format: str = "coco"
    #: COCO JSON file, Open Images CSV file, or (txt) the folder holding one ``<image stem>.txt`` per image
    annotations: str = ""
    #: folder of the images (COCO: file_name is relative to it; Open Images: ``<ImageID>.jpg``)
    images: str = ""
    min_box_fraction: float = 0.02
    max_box_fraction: float = 0.80
    #: side of the square training crops, a multiple of 64
    image_size: int = 512
    #: probability of replacing the exemplar condition by the learned vector
    drop_rate: float = 0.2
    #: probability of a Bezier-polygon mask (else the extended rectangle)
    bezier_rate: float = 0.5
    num_workers: int = 2
    # --- optimisation --------------------------------------------------------------------------------------------------
    #: samples per process and micro-step (the paper: 4 per GPU on 8 GPUs)
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    warmup_steps: int = 10_000
    max_steps: int = 100_000
    weight_decay: float = 0.01
    #: clip the gradient norm (0 = off)
    max_grad_norm: float = 1.0
    #: auto = bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPU
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    # --- output --------------------------------------------------------------------------------------------------------
    output_dir: str = "pbe-finetune"
    #: save a resumable checkpoint every N optimizer steps (0 = only at the end)
    checkpoint_every: int = 1000
    #: resumable checkpoints kept (older ones are deleted; 0 = keep all)
    keep_checkpoints: int = 3
    #: "" (start fresh), "latest" (newest checkpoint in output_dir) or a checkpoint folder
    resume: str = ""
    #: the final model, in the original single-file layout, inside output_dir
    final_name: str = "paint_by_example_finetuned.safetensors"
    save_dtype: str = "fp32"
    log_every: int = 10
    progress: bool = True

    def validate(self) -> TrainConfig:
        if not self.init_from:
            raise ConfigError("init_from is not set: give an SD-1.x checkpoint or a Paint-by-Example checkpoint.")
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format is {self.data_format!r}; choose one of {', '.join(DATA_FORMATS)}.")
        if not self.annotations or not self.images:
            raise ConfigError("annotations and images must both be set (the box file/folder and the image folder).")
        if self.image_size < 64 or self.image_size % 64:
            raise ConfigError(f"image_size is {self.image_size}; it must be a positive multiple of 64 (e.g. 512).")
        if not 0 <= self.min_box_fraction < self.max_box_fraction <= 1:
            raise ConfigError(
                f"min_box_fraction {self.min_box_fraction} and max_box_fraction {self.max_box_fraction} must satisfy "
                f"0 <= min < max <= 1."
            )
        for name in ("drop_rate", "bezier_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it is a probability in [0, 1].")
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "mapper_depth", "unet_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1.")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "num_workers", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be 0 or more.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision is {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}.")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"save_dtype is {self.save_dtype!r}; choose one of {', '.join(SAVE_DTYPES)}.")
        if not self.final_name.endswith(".safetensors"):
            raise ConfigError(f"final_name is {self.final_name!r}; it must end in .safetensors.")
        return self

    def check_paths(self) -> TrainConfig:
        """The input files and folders exist (checked before anything is created or loaded)."""
        for name, what in (
            ("init_from", "an SD-1.x checkpoint file, or a Paint-by-Example checkpoint file or diffusers folder"),
            ("clip_weights", "the CLIP ViT-L/14 vision weights (.safetensors or .bin)"),
            ("annotations", f"the {self.data_format} box annotations (file or folder)"),
            ("images", "the folder of training images"),
        ):
            value = getattr(self, name)
            if value and not Path(value).exists():
                raise ConfigError(f"{name} = {value!r} does not exist; set {name} to {what}.")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _convert(name: str, value, *, from_text: bool):
    """Coerce ``value`` to the type of field ``name`` (text from the command line, or a parsed file value)."""
    kind = type(getattr(TrainConfig(), name))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if from_text and str(value).lower() in ("0", "false", "no", "off"):
            return False
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(str(value).replace("_", ""))
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        return str(value)
    raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}.")


def read_config_file(path: str | Path) -> dict:
    """Read a ``.toml`` or ``.json`` config file into a flat ``{key: value}`` dict (tables are flattened)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"Cannot read the config file {path}: {e.strerror or e}.") from e
    if path.suffix == ".json":
        data = json.loads(raw)
    elif sys.version_info >= (3, 11):
        import tomllib

        try:
            data = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}.") from e
    else:  # pragma: no cover - Python 3.10
        raise ConfigError(f"{path}: TOML needs Python 3.11+; use a .json config file on Python 3.10.")
    flat: dict = {}
    for k, v in data.items():
        items = v.items() if isinstance(v, dict) else [(k, v)]
        for kk, vv in items:
            if kk in flat:
                raise ConfigError(f"{path}: the key {kk!r} is set twice.")
            flat[kk] = vv
    return flat


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"Override {text!r} is not of the form key=value (e.g. max_steps=500).")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def build_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                 validate: bool = True) -> TrainConfig:
    """Defaults, then the file's values, then ``key=value`` overrides; validated unless ``validate`` is False (the
    values and types of known keys are always checked)."""
    values: dict = {}
    if path:
        for k, v in read_config_file(path).items():
            _check_known(k, f"the config file {path}")
            values[k] = _convert(k, v, from_text=False)
    for item in overrides:
        k, v = parse_override(item)
        _check_known(k, "the command line")
        values[k] = _convert(k, v, from_text=True)
    cfg = TrainConfig(**values)
    return cfg.validate() if validate else cfg


def _check_known(key: str, where: str) -> None:
    if key not in _FIELDS:
        import difflib

        close = difflib.get_close_matches(key, list(_FIELDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown setting {key!r} in {where}.{hint}")
