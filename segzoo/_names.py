"""The one parser of model names: ``[scheme:]name[.tag][@revision]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

SCHEMES = ("local-dir", "hf-hub")
_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}"
_HUB_RE = re.compile(rf"^({_HUB_PART})/({_HUB_PART})(?:@([A-Za-z0-9][A-Za-z0-9_.\-/]{{0,127}}))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9][A-Za-z0-9_\-]*)?$")


@dataclass(frozen=True)
class ModelName:
    """A parsed model name. ``scheme`` is None for registry names (``recipe`` or ``recipe.tag``,
    or a head name); ``path`` is the folder of ``local-dir:``; ``repo_id``/``revision`` those of
    ``hf-hub:``."""

    scheme: str | None
    name: str = ""
    tag: str | None = None
    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None


def parse_model_name(text: str) -> ModelName:
    """Split a name given to ``create`` into its parts; a malformed one is a UsageError."""
    if not isinstance(text, str) or not text:
        raise UsageError(f"a model name must be a non-empty string, got {text!r}")
    if text.startswith("local-dir:"):
        path = text[len("local-dir:") :]
        if not path:
            raise UsageError("local-dir: needs a folder, e.g. 'local-dir:./my_model'")
        return ModelName("local-dir", path=path)
    if text.startswith("hf-hub:"):
        repo_id, revision = parse_hub_name(text[len("hf-hub:") :])
        return ModelName("hf-hub", repo_id=repo_id, revision=revision)
    if not _NAME_RE.match(text):
        raise UsageError(
            f"invalid model name {text!r}: use RECIPE, RECIPE.TAG, HEAD, 'local-dir:PATH' or "
            "'hf-hub:ORG/REPO[@REVISION]'"
        )
    name, _, tag = text.partition(".")
    return ModelName(None, name=name, tag=tag or None)


def parse_hub_name(text: str) -> tuple[str, str | None]:
    """``ORG/REPO[@REVISION]`` -> (repo_id, revision); names the Hub accepts only."""
    m = _HUB_RE.match(text)
    if m is None or ".." in text:
        raise UsageError(
            f"hf-hub: names look like 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO@REVISION' (letters, digits, "
            f"'-', '_', '.'), got {text!r}"
        )
    return f"{m.group(1)}/{m.group(2)}", m.group(3)
