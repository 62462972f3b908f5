"""The 8 Global StreetScapes attributes: canonical classes, prompts and label aliases.

One frozen table (methods §5.3) that every head, reader and report uses. Class order is the
sorted order of the reference, so class ids match Global StreetScapes checkpoints. Raw label
values from CSVs (``yes``, ``True``, ``dusk/dawn``, ...) map onto canonical class keys through
``Attribute.canonical_label``; anything else is refused with ``UnknownLabelError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from contracts.errors import CityAuditError

_POSITIVE = ("yes", "true", "1")
_NEGATIVE = ("no", "false", "0")


class UnknownLabelError(CityAuditError, ValueError):
    """A label value that is not one of an attribute's classes (or their known aliases)."""


@dataclass(frozen=True)
class Attribute:
    """One classification task: its classes, the prompt template and how raw labels map in.

    ``classes`` are canonical keys (snake_case, stable, used in every output); ``phrases`` give
    the words put into ``template`` for each class (the reference's class-name normalisation);
    ``aliases`` map lower-cased raw values to canonical keys.
    """

    name: str
    classes: tuple[str, ...]
    template: str
    phrases: Mapping[str, str]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def prompts(self) -> list[str]:
        """The text prompt of each class, in class order."""
        return [self.template.format(self.phrases[c]) for c in self.classes]

    def canonical_label(self, raw: object) -> str:
        """Map a raw label value (``"Dusk/Dawn"``, ``True``, ``"front_back"``) to a class key."""
        text = str(raw).strip().lower()
        for candidate in (text, text.replace(" ", "_"), text.replace("_", " ")):
            if candidate in self.classes:
                return candidate
            if candidate in self.aliases:
                return self.aliases[candidate]
        raise UnknownLabelError(
            f"unknown {self.name} label {raw!r}; expected one of {list(self.classes)}"
            f" (or aliases {sorted(self.aliases)})"
        )

    def class_index(self, raw: object) -> int:
        """The id of a raw label value in ``classes``."""
        return self.classes.index(self.canonical_label(raw))


def _binary(name: str, word: str) -> Attribute:
    negative, positive = f"no_{word}", word
    return Attribute(
        name=name,
        classes=(negative, positive),
        template="a photo with {}.",
        phrases={negative: f"no {word}", positive: word},
        aliases={**{v: positive for v in _POSITIVE}, **{v: negative for v in _NEGATIVE}, f"no {word}": negative},
    )


def _attributes() -> dict[str, Attribute]:
    items = [
        Attribute(
            name="weather",
            classes=("clear", "cloudy", "foggy", "rainy", "snowy"),
            template="a photo in {} weather.",
            phrases={c: c for c in ("clear", "cloudy", "foggy", "rainy", "snowy")},
        ),
        Attribute(
            name="lighting_condition",
            classes=("day", "dusk_dawn", "night"),
            template="a photo taken during {}.",
            phrases={"day": "day", "dusk_dawn": "twilight", "night": "night"},
            aliases={"dusk/dawn": "dusk_dawn", "dawn/dusk": "dusk_dawn", "dawn": "dusk_dawn", "dusk": "dusk_dawn",
                     "twilight": "dusk_dawn"},
        ),
        _binary("glare", "glare"),
        _binary("reflection", "reflection"),
        Attribute(
            name="quality",
            classes=("good", "slightly_poor", "very_poor"),
            template="a photo of {} quality.",
            phrases={"good": "good", "slightly_poor": "slightly poor", "very_poor": "very poor"},
        ),
        Attribute(
            name="view_direction",
            classes=("front_back", "side"),
            template="a photo captured {} the road.",
            phrases={"front_back": "along", "side": "across"},
            aliases={"front/back": "front_back", "back/front": "front_back", "front": "front_back",
                     "back": "front_back", "along": "front_back", "across": "side"},
        ),
        Attribute(
            name="platform",
            classes=("cycling_surface", "driving_surface", "fields", "railway", "tunnel", "walking_surface"),
            template="a photo taken on {}.",
            phrases={c: c.replace("_", " ") for c in
                     ("cycling_surface", "driving_surface", "fields", "railway", "tunnel", "walking_surface")},
        ),
        Attribute(
            name="pano_status",
            classes=("non_panoramic", "panoramic"),
            template="a {} photo.",
            phrases={"non_panoramic": "non-panoramic", "panoramic": "panoramic"},
            aliases={**{v: "panoramic" for v in _POSITIVE}, **{v: "non_panoramic" for v in _NEGATIVE},
                     "non-panoramic": "non_panoramic", "spherical": "panoramic", "equirectangular": "panoramic",
                     "perspective": "non_panoramic", "fisheye": "non_panoramic"},
        ),
    ]
    return {a.name: a for a in items}


#: The 8 Global StreetScapes attributes, keyed by their dataset column name.
ATTRIBUTES: Mapping[str, Attribute] = MappingProxyType(_attributes())


def get_attribute(name: str) -> Attribute:
    """Look an attribute up by name, with an error listing the valid names."""
    try:
        return ATTRIBUTES[name]
    except KeyError:
        raise KeyError(f"unknown attribute {name!r}; choose from {', '.join(ATTRIBUTES)}") from None
