"""``manifest.json``: what the generate step wrote, so a report can say which model and settings made the results.

Format ``pbe-cocoee-results/1``, a JSON object in the output folder::

    {
      "format": "pbe-cocoee-results/1",
      "model": {"file": "paint_by_example.safetensors", "sha256": "<64 hex>"},
      "settings": {... any JSON: sampler, steps, guidance, seed rule, size, exemplar preprocessing ...},
      "settings_sha256": "<sha256 of the canonical JSON of settings>",
      "rows": [
        {"id": "000000001773", "result": "results/000000001773.png", "settings_sha256": "<64 hex>"},
        ...
      ]
    }

``result`` is relative to the folder holding ``manifest.json`` (or absolute). Each row carries the hash of the settings
it was generated with, so a run resumed with other settings shows up as mixed. The canonical JSON of the settings is
``json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as UTF-8
(:func:`settings_sha256`). Extra keys (in the object or in rows, e.g. a row's ``seed``) are allowed and kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "pbe-cocoee-results/1"
FILENAME = "manifest.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """``manifest.json`` is malformed; the message names the entry and what is expected."""


def settings_sha256(settings: Mapping) -> str:
    """sha256 (hex) of the canonical JSON of ``settings`` (see the module docstring)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A read manifest: ``results`` maps a 12-digit id to its result file; ``row_settings`` to its settings hash."""

    path: Path
    model: dict
    settings: dict
    settings_sha256: str
    results: dict[str, Path] = field(default_factory=dict)
    row_settings: dict[str, str] = field(default_factory=dict)

    @property
    def mixed_settings(self) -> list[str]:
        """The distinct settings hashes of the rows other than the manifest's own."""
        return sorted(set(self.row_settings.values()) - {self.settings_sha256})

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "model": self.model,
            "settings": self.settings,
            "settings_sha256": self.settings_sha256,
            "settings_sha256_matches": self.settings_sha256 == settings_sha256(self.settings),
            "rows": len(self.results),
            "rows_with_other_settings": sum(h != self.settings_sha256 for h in self.row_settings.values()),
        }


def read_manifest(folder: str | Path) -> Manifest | None:
    """``folder/manifest.json`` if present (else None), checked; raises :class:`ManifestError`."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path}: 'format' is {data.get('format') if isinstance(data, dict) else data!r}, expected {FORMAT!r}")
    model, settings, digest = data.get("model"), data.get("settings"), data.get("settings_sha256")
    if not isinstance(model, dict) or not _HEX64.match(str(model.get("sha256", ""))):
        raise ManifestError(f"{path}: 'model' must be an object with the model file's 'sha256' (64 lower-case hex)")
    if not isinstance(settings, dict) or not _HEX64.match(str(digest)):
        raise ManifestError(f"{path}: 'settings' must be an object and 'settings_sha256' 64 lower-case hex")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise ManifestError(f"{path}: 'rows' must be a list of {{id, result, settings_sha256}} objects")
    results, row_settings = {}, {}
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("result"), str)
                and _HEX64.match(str(row.get("settings_sha256")))):
            raise ManifestError(f"{path}: rows[{i}] must have string 'id', 'result' and a 64-hex 'settings_sha256'")
        if row["id"] in results:
            raise ManifestError(f"{path}: id {row['id']} appears in two rows")
        results[row["id"]] = path.parent / row["result"]
        row_settings[row["id"]] = row["settings_sha256"]
    return Manifest(path, model, settings, digest, results, row_settings)


def write_manifest(
    folder: str | Path, model_file: str, model_sha256: str, settings: Mapping, rows: Iterable[Mapping]
) -> Path:
    """Write ``folder/manifest.json`` (for the generate step). ``rows``: mappings with ``id`` and ``result`` (relative
    to ``folder``), optionally ``settings_sha256`` (default: that of ``settings``) and any extra keys."""
    digest = settings_sha256(settings)
    data = {
        "format": FORMAT,
        "model": {"file": model_file, "sha256": model_sha256},
        "settings": dict(settings),
        "settings_sha256": digest,
        "rows": [{**row, "settings_sha256": row.get("settings_sha256", digest)} for row in rows],
    }
    path = Path(folder) / FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
