"""Texts every output shares, so that a warning reads the same in the console, the logs and the files."""

from __future__ import annotations

UNTRAINED = "UNTRAINED MODEL"
#: What every published artefact of an untrained run says (map title, interactive map banner, report).
UNTRAINED_NOTE = f"{UNTRAINED}: these labels come from random weights and are noise. Do not use them for decisions."

UNTRAINED_WARNING = (
    UNTRAINED + ": the '{model}' backbone has random weights, so {what} noise. "
    "Use it to check the pipeline, never as a result. Real runs use --model vit-b16 (downloads OpenAI "
    "weights once) or --weights PATH."
)


def untrained_warning(model: str, what: str = "every label is") -> str:
    """The one warning for results of a backbone with random weights (``what`` names the results)."""
    return UNTRAINED_WARNING.format(model=model, what=what)


#: The credit lines of the sources city-audit knows; run.json and every published artefact carry them.
MAPILLARY_ATTRIBUTION = "images CC BY-SA 4.0, © Mapillary contributors (https://www.mapillary.com)"
OSM_ATTRIBUTION = "roads © OpenStreetMap contributors, ODbL 1.0"
SCHEMA_ATTRIBUTION = "attribute schema: Global StreetScapes (Hou et al. 2024, ISPRS J. 215:216-238)"
