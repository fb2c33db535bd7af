"""API-format workflows: read them (hand-edited ones too), find their nodes by title, apply the command line's settings.
Standard library only.

What a workflow file may be: an API-format JSON object ``{node id: {"class_type": ..., "inputs": {...},
"_meta": {"title": ...}}}`` (ComfyUI's *Export (API)*), or a saved ``POST /prompt`` body ``{"prompt": {...},
"client_id": ..., ...}``, whose ``prompt`` is taken. UTF-8 (a byte-order mark is fine) or UTF-16 with its mark. A node
whose ``_meta`` or title is missing, ``null`` or not text is untitled. Anything else (a UI-format workflow, a JSON
syntax error such as a trailing comma, a node that is not an object) is refused with ``FILE: line N: ...`` or
``FILE: node ID: ...`` and what to do.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ClientError
from .settings import Settings

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
#: the keys of a ``POST /prompt`` body besides ``prompt`` (ComfyUI 0.3.64 ``server.py``: ``post_prompt``)
PROMPT_BODY_KEYS = {"prompt", "client_id", "extra_data", "prompt_id", "number", "front", "partial_execution_targets"}


def find_workflow(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not path.is_file():
        path = API_WORKFLOWS / f"{Path(name_or_path).stem}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
        raise ClientError(f"no workflow {name_or_path!r}: give an API-format JSON file or one of: {names}")
    return path


def load_workflow(name_or_path: str) -> dict:
    """An API workflow (a file path, or the name of one in the pack's workflows/api/) as ``{node id: node}``."""
    path = find_workflow(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ClientError(f"{path}: cannot read it: {e.strerror or e}") from None
    return parse_workflow(raw, str(path))


def decode_text(raw: bytes, where: str) -> str:
    """UTF-8 (with or without a byte-order mark) or UTF-16 with its mark; ClientError ``WHERE: line N: ...``."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise ClientError(f"{where}: it starts like UTF-16 text but is not; save it as UTF-8") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ClientError(f"{where}: line {line}: byte 0x{raw[e.start]:02x} at column {column} is not UTF-8 text; "
                          f"save the file as UTF-8") from None


def _line_column(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _prev_char(text: str, pos: int) -> int:
    """Index of the last non-blank character before ``pos`` (-1 if none)."""
    k = pos - 1
    while k >= 0 and text[k].isspace():
        k -= 1
    return k


def _next_char(text: str, pos: int) -> int:
    k = pos
    while k < len(text) and text[k].isspace():
        k += 1
    return k


def json_problem(text: str, error: json.JSONDecodeError) -> tuple[int, str]:
    """The line and a plain description of a JSON syntax error, with the fix for the usual hand-editing slips."""
    pos = error.pos
    at = text[pos] if pos < len(text) else ""
    comma = None  # a trailing comma: Python 3.10-3.12 stop after it, 3.13 on it
    if at == "," and text[_next_char(text, pos + 1): _next_char(text, pos + 1) + 1] in ("}", "]"):
        comma = pos
    elif at in ("}", "]") and _prev_char(text, pos) >= 0 and text[_prev_char(text, pos)] == ",":
        comma = _prev_char(text, pos)
    if comma is not None:
        line, column = _line_column(text, comma)
        return line, (f"a trailing comma at column {column}, after the last item of "
                      f"{'an object' if text[_next_char(text, comma + 1)] == '}' else 'a list'}; JSON allows none: "
                      f"delete that comma")  # fmt: skip
    line, column = _line_column(text, pos)
    if not text.strip():
        return 1, "the file is empty; give an API-format workflow (ComfyUI: Workflow > Export (API))"
    if text.startswith("/", pos):
        return line, f"a comment at column {column}; JSON has none: delete it"
    if at == "'":
        return line, f"a single quote at column {column}; JSON strings and names take double quotes"
    return line, f"{error.msg} (column {column})"


def parse_workflow(raw: bytes, where: str) -> dict:
    """The API prompt in a workflow file's bytes (module docstring); ``where`` names the file in messages."""
    text = decode_text(raw, where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        line, problem = json_problem(text, e)
        raise ClientError(f"{where}: line {line}: {problem}") from None
    except RecursionError:
        raise ClientError(f"{where}: nested too deeply to be a workflow") from None
    if not isinstance(data, dict):
        raise ClientError(f"{where}: holds a JSON {type(data).__name__}, not an API workflow (an object of nodes: "
                          f"ComfyUI's Workflow > Export (API))")
    if "nodes" in data and "links" in data:
        raise ClientError(f"{where} is a UI workflow; use its API format (workflows/api/, or 'Export (API)')")
    if isinstance(data.get("prompt"), dict) and set(data) <= PROMPT_BODY_KEYS and "class_type" not in data["prompt"]:
        data = data["prompt"]  # a saved POST /prompt body
    if not data:
        raise ClientError(f"{where}: has no nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict):
            raise ClientError(f"{where}: node {node_id!r} is a JSON {type(node).__name__}, not an object with "
                              f"class_type and inputs; is this an API-format workflow?")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise ClientError(f"{where}: node {node_id!r} has no class_type; every node of an API workflow names "
                              f"its node type there")
        if node.get("inputs") is None:
            node["inputs"] = {}
        elif not isinstance(node["inputs"], dict):
            raise ClientError(f"{where}: node {node_id!r} ({node['class_type']}): its inputs are a JSON "
                              f"{type(node['inputs']).__name__}, not an object of input name -> value")
    return data


def node_title(node: dict) -> str:
    """A node's title, or "" when it has none (``_meta`` or its title missing, null or not text)."""
    meta = node.get("_meta") if isinstance(node, dict) else None
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else ""


def titled(prompt: dict, title: str) -> list[str]:
    """Ids of the nodes whose title is ``title`` (case and surrounding blanks ignored)."""
    want = title.strip().lower()
    return [i for i, n in prompt.items() if node_title(n).strip().lower() == want]


def exemplar_slots(prompt: dict) -> list[str]:
    """Node ids of the exemplar LoadImage nodes, in order: 'Exemplar', 'Exemplar 2', 'Exemplar 3', ..."""
    slots = titled(prompt, "Exemplar")
    k = 2
    while titled(prompt, f"Exemplar {k}"):
        slots += titled(prompt, f"Exemplar {k}")
        k += 1
    return slots


@dataclass(frozen=True)
class Slots:
    """Where a row's files go in a workflow, by node id: the Source LoadImage, the exemplar LoadImages in order, and
    the LoadImageMask nodes titled 'Mask' (empty: the mask travels as the source's alpha, ``/upload/mask``)."""

    source: str
    exemplars: list[str]
    mask_loaders: list[str]


def find_slots(prompt: dict) -> Slots:
    """The workflow's :class:`Slots`; ClientError naming what is missing."""
    sources = [i for i in titled(prompt, "Source") if prompt[i]["class_type"] == "LoadImage"]
    exemplars = exemplar_slots(prompt)
    if len(sources) != 1 or not exemplars:
        raise ClientError(
            f"the workflow needs one LoadImage titled 'Source' and one titled 'Exemplar' (then 'Exemplar 2', ... for "
            f"more); it has {len(sources)} LoadImage titled 'Source' and {len(exemplars)} exemplar node(s)"
        )
    mask_loaders = [i for i in titled(prompt, "Mask") if prompt[i]["class_type"] == "LoadImageMask"]
    return Slots(sources[0], exemplars, mask_loaders)


def check_workflow(prompt: dict) -> tuple[str, list[str]]:
    """The id of the Source LoadImage and those of the exemplar slots; ClientError naming what is missing."""
    slots = find_slots(prompt)
    return slots.source, slots.exemplars


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
