"""The run manifest ``run.json``: parameters, versions, model ids, counts, timings, failures.

It never contains secrets: parameters pass through ``redact`` before they are written.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from contracts.files import write_text_atomic

SECRET_KEYS = ("token", "secret", "password", "api_key", "access_key")
VERSIONED_PACKAGES = ("city-audit", "torch", "open_clip_torch", "prefect", "duckdb", "geopandas", "shapely", "pyarrow")


def redact(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``parameters`` (nested groups included) with any secret-looking key's value replaced by ``"***"``."""
    return {k: ("***" if any(s in k.lower() for s in SECRET_KEYS) and v
                else redact(v) if isinstance(v, Mapping) else v) for k, v in parameters.items()}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(path: str | os.PathLike, *, run_id: str, parameters: Mapping[str, Any], model: Mapping[str, Any],
                   counts: Mapping[str, int], timings_s: Mapping[str, float], failures: list[dict],
                   outputs: Mapping[str, str], attribution: list[str], empty_run: list[str] | None = None) -> Path:
    """Write ``run.json`` atomically and return its path (``empty_run``: why the run has nothing to map, if so)."""
    manifest = {
        "run_id": run_id,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "model_trained": bool(model.get("trained")),
        "parameters": redact(parameters),
        "versions": package_versions(),
        "model": dict(model),
        "counts": dict(counts),
        "timings_s": {k: round(v, 3) for k, v in timings_s.items()},
        "failures": failures,
        "outputs": dict(outputs),
        "attribution": attribution,
        **({"empty_run": list(empty_run)} if empty_run else {}),
    }
    return write_text_atomic(path, json.dumps(manifest, indent=2, default=str) + "\n")
