"""API-format workflows: find them, find their nodes by title, apply the command line's settings. Standard library only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .api import ClientError

if TYPE_CHECKING:
    from .jobs import Settings

PACK_DIR = Path(__file__).resolve().parent.parent.parent
API_WORKFLOWS = PACK_DIR / "workflows" / "api"
DEFAULT_WORKFLOW = "pbe_one_node_edit"
#: command-line option -> the workflow inputs it sets (on every node that has one as a value)
OVERRIDES = {
    "seed": ("seed", "noise_seed"),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
    "denoise": ("denoise",),
}


def load_workflow(name_or_path: str) -> dict:
    """An API workflow: a file path, or the name of one in the pack's workflows/api/."""
    path = Path(name_or_path)
    if not path.is_file():
        path = API_WORKFLOWS / f"{Path(name_or_path).stem}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
        raise ClientError(f"no workflow {name_or_path!r}: give an API-format JSON file or one of: {names}")
    data = json.loads(path.read_text())
    if "nodes" in data and "links" in data:
        raise ClientError(f"{path} is a UI workflow; use its API format (workflows/api/, or 'Export (API)')")
    return data


def titled(prompt: dict, title: str) -> list[str]:
    return [i for i, n in prompt.items() if n.get("_meta", {}).get("title", "").lower() == title.lower()]


def exemplar_slots(prompt: dict) -> list[str]:
    """Node ids of the exemplar LoadImage nodes, in order: 'Exemplar', 'Exemplar 2', 'Exemplar 3', ..."""
    slots = titled(prompt, "Exemplar")
    k = 2
    while titled(prompt, f"Exemplar {k}"):
        slots += titled(prompt, f"Exemplar {k}")
        k += 1
    return slots


def apply_settings(prompt: dict, settings: Settings, seed: int | None = None) -> dict:
    """A copy of ``prompt`` with the command line's values set; ClientError for a value nothing takes."""
    prompt = json.loads(json.dumps(prompt))
    values = dict(settings.values)
    if seed is not None:
        values["seed"] = seed
    for option, value in values.items():
        hits = 0
        for node in prompt.values():
            for name in OVERRIDES[option]:
                if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                    node["inputs"][name] = value
                    hits += 1
        if not hits:
            raise ClientError(f"the workflow has no {'/'.join(OVERRIDES[option])} input to set --{option} on")
    if settings.model is not None:
        loaders = [n for n in prompt.values() if n["class_type"] == "PBE_LoadModel"]
        if not loaders:
            raise ClientError("the workflow has no PBE_LoadModel node to set --model on")
        for node in loaders:
            node["inputs"]["model_name"] = settings.model
    for target, name, value in settings.sets:
        ids = [target] if target in prompt else titled(prompt, target)
        if not ids:
            raise ClientError(f"--set {target}.{name}: no node with that id or title")
        for i in ids:
            prompt[i]["inputs"][name] = value
    return prompt
