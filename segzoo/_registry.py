"""The registry of backbones, heads and model recipes that plugins fill."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ._constants import DEFAULT_PREPROCESSING
from .errors import DuplicateNameError, RegistryError, UnknownNameError

Kind = Literal["backbone", "head", "model", "converter"]
KINDS: tuple[Kind, ...] = ("backbone", "head", "model", "converter")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_BACKBONE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(:\*|:[A-Za-z0-9][A-Za-z0-9_\-./]*)?$")


@dataclass(frozen=True)
class WeightSpec:
    """A weight tag of a recipe (``deeplabv3_resnet101.tv_coco_voc``) and what is known about it.

    Sources, in order: ``hf_hub_id`` at the pinned ``revision`` (a segzoo folder with
    safetensors), else ``url``: a torchvision-format checkpoint downloaded once, checked against
    ``sha256`` and converted into a segzoo folder in the cache. ``sha256`` may be a prefix:
    torchvision publishes only the first 8 hex digits of its files' hashes.
    """

    num_classes: int
    aux: bool = False
    hf_hub_id: str | None = None
    revision: str | None = None
    filename: str = "model.safetensors"
    url: str | None = None
    sha256: str | None = None
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # {"dataset": ..., "miou": ..., "pixel_acc": ...}
    license: str | None = None
    source: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.hf_hub_id is None and self.url is None:
            raise RegistryError("a weight tag needs hf_hub_id or url")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.sha256 is not None and not all(c in "0123456789abcdef" for c in self.sha256.lower()):
            raise RegistryError(f"sha256 must be hex digits, got {self.sha256!r}")

    @classmethod
    def from_any(cls, value: WeightSpec | dict[str, Any]) -> WeightSpec:
        if isinstance(value, WeightSpec):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise RegistryError(f"unknown weight tag field(s) {sorted(unknown)}")
        return cls(**value)

    def card_metadata(self, tag: str) -> dict[str, Any]:
        """What config.json records about these weights (for the model card)."""
        return {
            "tag": tag,
            "source": self.source or self.url or self.hf_hub_id,
            "license": self.license,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class Recipe:
    """A model recipe: a backbone, a head, an optional auxiliary head and their defaults."""

    name: str
    backbone: str
    head: str
    num_classes: int = 21
    aux: bool = False
    aux_head: str = "fcn"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_head_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    description: str = ""
    weights: dict[str, Any] = field(default_factory=dict)
    default_tag: str | None = None

    def __post_init__(self) -> None:
        for attr in ("backbone", "head", "aux_head"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise RegistryError(f"recipe {self.name!r}: {attr} must be a registered name (a string)")
        if (
            not isinstance(self.num_classes, int)
            or isinstance(self.num_classes, bool)
            or self.num_classes < 1
        ):
            raise RegistryError(
                f"recipe {self.name!r}: num_classes must be a positive int, got {self.num_classes!r}"
            )
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if len(self.labels) != self.num_classes:
                raise RegistryError(
                    f"recipe {self.name!r}: {len(self.labels)} labels for num_classes={self.num_classes}"
                )
        weights = {}
        for tag, value in dict(self.weights).items():
            if not isinstance(tag, str) or not _NAME_RE.match(tag):
                raise RegistryError(
                    f"recipe {self.name!r}: invalid weight tag {tag!r} (letters, digits, '_', '-')"
                )
            try:
                weights[tag] = WeightSpec.from_any(value)
            except (TypeError, RegistryError) as err:
                raise RegistryError(f"recipe {self.name!r}, weight tag {tag!r}: {err}") from None
        object.__setattr__(self, "weights", weights)
        if self.weights and self.default_tag is None:
            object.__setattr__(self, "default_tag", next(iter(self.weights)))
        if self.default_tag is not None and self.default_tag not in self.weights:
            raise RegistryError(
                f"recipe {self.name!r}: default_tag {self.default_tag!r} is not in its weights"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "name"]


@dataclass(frozen=True)
class Entry:
    """One registered backbone, head or recipe and the plugin that provides it."""

    kind: Kind
    name: str
    obj: Any  # the builder for backbones and heads, the Recipe for models
    description: str
    plugin: str
    distribution: str | None = None
    version: str | None = None

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":*")

    def provider(self) -> dict[str, str | None]:
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version}

    def provided_by(self) -> str:
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist}"


def make_entry(
    kind: Kind,
    name: str,
    obj: Any = None,
    *,
    plugin: str,
    distribution: str | None = None,
    version: str | None = None,
    description: str = "",
    **recipe_fields: Any,
) -> Entry:
    """Validate one registration and turn it into an Entry."""
    if not isinstance(name, str):
        raise RegistryError(f"{kind} names must be strings, got {name!r}")
    pattern = _BACKBONE_RE if kind == "backbone" else _NAME_RE
    if not pattern.match(name):
        extra = ", or 'prefix:*' for a family" if kind == "backbone" else ""
        raise RegistryError(
            f"invalid {kind} name {name!r}: use letters, digits, '_' and '-' (no '.' or ':'{extra})"
        )
    if kind == "model":
        if obj is not None:
            raise RegistryError(
                f"register({name!r}, ...) for models takes keyword fields only, e.g. backbone=..."
            )
        unknown = set(recipe_fields) - set(Recipe.field_names())
        if unknown:
            raise RegistryError(
                f"recipe {name!r}: unknown field(s) {sorted(unknown)}; valid fields are {Recipe.field_names()}"
            )
        try:
            obj = Recipe(name=name, description=description, **recipe_fields)
        except TypeError as err:
            raise RegistryError(f"recipe {name!r}: {err}") from None
        description = description or f"{obj.head} on {obj.backbone}"
    else:
        if recipe_fields:
            raise RegistryError(
                f"register({name!r}) for {kind}s got unexpected fields {sorted(recipe_fields)}"
            )
        if not callable(obj):
            raise RegistryError(f"{kind} {name!r}: the builder must be callable, got {obj!r}")
        description = description or (obj.__doc__ or "").strip().split("\n")[0]
    return Entry(kind, name, obj, description, plugin, distribution, version)


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


class Registry:
    """Backbones, heads and recipes by name. A name is registered once; a second registration is
    refused with an error that names both plugins."""

    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
        self.note = ""  # appended to unknown-name errors (e.g. plugins that were not loaded)

    def add(self, entry: Entry) -> None:
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise DuplicateNameError(
                f"{entry.kind} {entry.name!r} is registered twice: by {existing.provided_by()} and by "
                f"{entry.provided_by()}. Uninstall one of them or choose another name."
            )
        self._entries[entry.kind][entry.name] = entry

    def check_new(self, entries: Iterable[Entry]) -> None:
        """Raise DuplicateNameError if any of ``entries`` clashes with the registry or each other."""
        seen: dict[tuple[str, str], Entry] = {}
        for e in entries:
            other = seen.get((e.kind, e.name)) or self._entries[e.kind].get(e.name)
            if other is not None:
                raise DuplicateNameError(
                    f"{e.kind} {e.name!r} is registered twice: by {other.provided_by()} and by "
                    f"{e.provided_by()}. Uninstall one of them or choose another name."
                )
            seen[(e.kind, e.name)] = e

    def entries(self, kind: Kind) -> list[Entry]:
        return [self._entries[kind][n] for n in sorted(self._entries[kind], key=_natural_key)]

    def names(
        self,
        kind: Kind,
        filter: str | Iterable[str] = "",
        exclude: str | Iterable[str] = (),
    ) -> list[str]:
        names = sorted(self._entries[kind], key=_natural_key)
        return filter_names(names, filter, exclude)

    def get(self, kind: Kind, name: str) -> Entry:
        entry = self._entries[kind].get(name)
        if entry is not None:
            return entry
        if kind == "backbone" and ":" in name:
            family = self._entries[kind].get(name.split(":", 1)[0] + ":*")
            if family is not None:
                return family
        raise UnknownNameError(unknown_name_message(kind, name, list(self._entries[kind]), note=self.note))


def filter_names(
    names: list[str], filter: str | Iterable[str] = "", exclude: str | Iterable[str] = ()
) -> list[str]:
    """Names matching any fnmatch pattern of ``filter`` and none of ``exclude`` (case-insensitive)."""
    includes = [filter] if isinstance(filter, str) else list(filter)
    includes = [p for p in includes if p]
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    out = []
    for n in names:
        low = n.lower()
        if includes and not any(fnmatch.fnmatchcase(low, p.lower()) for p in includes):
            continue
        if any(fnmatch.fnmatchcase(low, p.lower()) for p in excludes if p):
            continue
        out.append(n)
    return out


def unknown_name_message(
    kind: str, name: str, known: list[str], *, also: Iterable[str] = (), note: str = ""
) -> str:
    """``unknown KIND 'name'``, the closest names of ``known`` (and of ``also``: other kinds that
    would be accepted too), how many ``known`` holds and where to list them, then ``note``."""
    candidates = [*known, *also]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if not close:
        close = [k for k in candidates if name.lower() in k.lower() or k.lower() in name.lower()][:5]
    lister = {
        "backbone": "segzoo.list_backbones()",
        "head": "segzoo.list_heads()",
        "model": "segzoo.list_models()",
        "weight tag": "segzoo.list_models(pretrained=True)",
        "timm model": "timm.list_models()",
    }.get(kind)
    where = f"See {lister} for all {len(known)} {kind}s." if lister else "See `segzoo list`."
    return (
        f"unknown {kind} {name!r}."
        + (f" Closest: {', '.join(close)}." if close else "")
        + f" {where}"
        + (f" {note}" if note else "")
    )


def describe_builder(entry: Entry) -> dict[str, Any]:
    """The keyword arguments a backbone or head builder accepts, with their defaults; not the
    positionals segzoo fills in (a family's model name; a head's feature_info and num_classes)."""
    skip = 1 if entry.is_family else 2 if entry.kind == "head" else 0
    params = [
        p
        for p in inspect.signature(entry.obj).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return {p.name: None if p.default is p.empty else p.default for p in params[skip:]}
