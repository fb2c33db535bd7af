"""What a run is asked to do: a row (:class:`Job`) and the settings every row of the run shares (:class:`Settings`).
Standard library only.

These sit below everything else in the client (``workflow`` applies the settings, ``jobs`` runs the rows, ``fleet``
sends them to workers), so that no module has to import one above it to name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    """One edit: the source photo, its mask (white = the region to replace), the exemplar image(s) and an optional
    seed (None: the workflow's or ``--seed``)."""

    name: str
    source: Path
    mask: Path
    exemplars: list[Path]
    seed: int | None = None


@dataclass
class Settings:
    """The run's workflow and what the command line sets on it, and where the results go."""

    workflow: dict
    out_dir: Path
    model: str | None = None
    values: dict = field(default_factory=dict)  # option -> value, see workflow.OVERRIDES
    sets: list[tuple[str, str, object]] = field(default_factory=list)  # (node id or title, input, value)
    identity: dict = field(default_factory=dict)  # more that decides the result, for the key (a model file's stat)
    model_path: Path | None = None  # a --model given as a path, linked into a private ComfyUI as ``model``
    force: bool = False  # do rows again even if their result is there for the same settings
