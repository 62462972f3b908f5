"""Texts every output shares, so that a warning reads the same in the console, the logs and the files."""

from __future__ import annotations

UNTRAINED = "UNTRAINED MODEL"

UNTRAINED_WARNING = (
    "UNTRAINED MODEL: the '{model}' backbone has random weights, so {what} noise. "
    "Use it to check the pipeline, never as a result. Real runs use --model vit-b16 (downloads OpenAI "
    "weights once) or --weights PATH."
)


def untrained_warning(model: str, what: str = "every label is") -> str:
    """The one warning for results of a backbone with random weights (``what`` names the results)."""
    return UNTRAINED_WARNING.format(model=model, what=what)
