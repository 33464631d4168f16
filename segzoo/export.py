"""Export a model out of Python: ONNX, a ``torch.export`` program (.pt2), an AOTInductor package.

Every exported file takes the model's own input (float N x 3 x H x W, normalised) and returns
``out`` (then ``aux`` when kept). Batch, height and width are dynamic unless ``static`` is given;
the size constraint the model really has (H and W multiples of some stride, a minimum) is found by
exporting and written down. What a consumer needs besides the file (labels, preprocessing, the
size constraint) travels with it twice: as ``PATH.json`` beside it and inside the file (ONNX
metadata_props, pt2 extra file, AOTInductor package metadata), each under the key ``segzoo``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._factory import create
from ._version import __version__
from .errors import ExportError, UsageError

__all__ = [
    "FORMATS",
    "METADATA_KEY",
    "ExportedModel",
    "SizeConstraint",
    "export",
    "load_exported",
    "read_metadata",
]

FORMATS = ("onnx", "pt2", "aoti")
METADATA_KEY = "segzoo"
_PT2_EXTRA_FILE = "segzoo.json"  # torch.export.save's extra_files name for the metadata


@dataclass(frozen=True)
class SizeConstraint:
    """Input sizes an exported model accepts: H and W multiples of ``multiple``, at least ``min``
    (``max`` None: no upper bound); ``static`` (H, W) when it was exported for one size."""

    multiple: int
    min: int
    max: int | None
    static: tuple[int, int] | None = None

    def allows(self, height: int, width: int) -> bool:
        if self.static is not None:
            return (height, width) == tuple(self.static)
        return all(
            s % self.multiple == 0 and s >= self.min and (self.max is None or s <= self.max)
            for s in (height, width)
        )

    def example(self, stride: int) -> tuple[int, int]:
        """A small allowed (H, W), H != W, used to trace the model."""
        if self.static is not None:
            return self.static
        h = _round_up(max(self.min, 3 * stride), self.multiple)
        return h, h + _round_up(stride, self.multiple)


def _round_up(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


class _Outputs(nn.Module):
    """The model with tensor outputs: ``out``, then ``aux`` if kept (exporters want no dict)."""

    def __init__(self, model: nn.Module, keep_aux: bool) -> None:
        super().__init__()
        self.model, self.keep_aux = model, keep_aux

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        result = self.model(x)
        return (result["out"], result["aux"]) if self.keep_aux else result["out"]


def _max_reduction(model: nn.Module) -> int:
    info = getattr(model, "feature_info", None)
    reductions = [int(r) for r in info.reductions()] if info is not None else []
    return max(reductions, default=32)


def _dynamic_shapes(constraint: SizeConstraint) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    dims: dict[int, Any] = {0: Dim("batch", min=1)}
    if constraint.static is None:
        for axis, name in ((2, "height"), (3, "width")):
            m = constraint.multiple
            lo = max(1, math.ceil(constraint.min / m))
            hi = None if constraint.max is None else constraint.max // m
            kw = {"min": lo} if hi is None else {"min": lo, "max": hi}
            base = Dim(f"{name}_div{m}" if m > 1 else name, **kw)
            dims[axis] = base * m if m > 1 else base
    return {"x": dims}


def _try_export(wrapper: nn.Module, constraint: SizeConstraint, stride: int):
    """The ExportedProgram, or None when the model's shapes need a stricter constraint."""
    from torch._dynamo.exc import UserError, UserErrorType

    h, w = constraint.example(stride)
    device = next((p.device for p in wrapper.parameters()), torch.device("cpu"))
    x = torch.zeros(2, 3, h, w, device=device)
    try:
        ep = torch.export.export(wrapper, (x,), dynamic_shapes=_dynamic_shapes(constraint))
    except UserError as err:
        if err.error_type is UserErrorType.CONSTRAINT_VIOLATION:
            return None
        raise
    except NotImplementedError:
        # sympy, under torch's shape solver, gives up on some size expressions (floor divisions
        # nested in modulos): the same as a violated constraint, a stricter one may still export
        return None
    except AssertionError:
        # torch's shape solver asserts on what it cannot reduce (ceil-mode pooling at any size:
        # "Expected op to be '=='"), and a model's own size asserts fail the same way: a
        # constraint that does not hold, unless the size is already fixed
        if constraint.static is not None:
            raise
        return None
    return ep if _guards_hold(ep, constraint, stride) else None


def _guards_hold(ep: torch.export.ExportedProgram, constraint: SizeConstraint, stride: int) -> bool:
    """Whether the input guards torch kept (checks on derived sizes such as ``16 * Dim`` that it
    could not prove, which only the Python module runs, not ONNX or AOTInductor) hold for every
    allowed size. Layer sizes are floor divisions by at most the stride, so two periods of it
    cover every case; the guards run on meta tensors, which have sizes and no data."""
    if not getattr(ep, "_guards_code", None):
        return True
    guards = getattr(ep.module(), "_guards_fn", None)
    if guards is None:
        return False  # cannot check them: do not rely on this constraint
    if constraint.static is not None:
        sizes = [constraint.static[0]], [constraint.static[1]]
    else:
        start = _round_up(constraint.min, constraint.multiple)
        sizes = (list(range(start, start + 2 * stride, constraint.multiple)),) * 2
    for b in (1, 2):
        for h in sizes[0]:
            for w in sizes[1]:
                try:
                    guards(torch.empty(b, 3, h, w, device="meta"))
                except AssertionError:
                    return False
    return True


def export_program(
    model: nn.Module,
    *,
    static: Sequence[int] | None = None,
    keep_aux: bool = False,
    multiple: int | None = None,
    max_size: int | None = None,
) -> tuple[torch.export.ExportedProgram, SizeConstraint]:
    """``torch.export`` the model (in eval mode) and the least size constraint it exports with.

    With ``multiple`` None, H and W are tried free first, then as multiples of the backbone's
    largest reduction, then of the smallest power of two between that still exports.
    """
    stride = _max_reduction(model)
    wrapper = _Outputs(model, keep_aux).eval()
    if static is not None:
        h, w = (int(s) for s in static)
        constraint = SizeConstraint(1, min(h, w), max(h, w), (h, w))
        return _export_or_explain(wrapper, constraint, stride), constraint

    def at(m: int, least: int | None = None) -> SizeConstraint:
        # the smallest size gives the deepest feature two pixels (one pixel is a special case for
        # broadcasting, which traced graphs cannot keep dynamic)
        return SizeConstraint(m, _round_up(least or 2 * stride, m), max_size)

    def least_min(m: int):
        """The export at multiples of ``m`` with the smallest minimum size that works. Maps of one
        pixel are special cases (broadcasting, align_corners scales), so a model that pools its
        deepest map further (PAN's pyramid) exports only above some size; exporting is monotonic
        in that minimum, so bisect it between 2 and 16 strides."""
        if (ep := _try_export(wrapper, at(m), stride)) is not None:
            return ep, at(m)
        lo, hi = 2, 16  # in strides: lo fails, hi is tried next
        if (best := _try_export(wrapper, at(m, hi * stride), stride)) is None:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (ep := _try_export(wrapper, at(m, mid * stride), stride)) is not None:
                best, hi = ep, mid
            else:
                lo = mid
        return best, at(m, hi * stride)

    if multiple is not None:
        if (found := least_min(multiple)) is None:
            raise ExportError(
                f"the model cannot be exported for sizes that are multiples of {multiple}: the shapes "
                "of its layers do not fit"
            )
        return found
    if (ep := _try_export(wrapper, at(1), stride)) is not None:
        return ep, at(1)
    if (found := least_min(stride)) is None:
        raise ExportError(
            f"the model does not export with dynamic height and width (tried any size, and multiples "
            f"of its stride {stride}): export one size with static=(H, W) (--static H W)"
        )
    best, constraint = found
    least = constraint.min
    best_m, lo, hi = stride, 0, int(math.log2(stride))  # powers of two: 2**lo fails, 2**hi exports
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (ep := _try_export(wrapper, at(2**mid, least), stride)) is not None:
            best, best_m, hi = ep, 2**mid, mid
        else:
            lo = mid
    return best, at(best_m, least)


def _export_or_explain(wrapper: nn.Module, constraint: SizeConstraint, stride: int):
    ep = _try_export(wrapper, constraint, stride)
    if ep is None:
        raise ExportError(
            f"the model cannot be exported for size {constraint.static}: the shapes of its layers do not fit"
        )
    return ep


def _metadata(model: nn.Module, format: str, constraint: SizeConstraint, keep_aux: bool) -> dict[str, Any]:

    config = dict(getattr(model, "config", None) or {})
    pre = dict(config.get("preprocessing") or {})
    pre.setdefault("resize", 520)
    pre.setdefault("mean", [0.485, 0.456, 0.406])
    pre.setdefault("std", [0.229, 0.224, 0.225])
    pre.setdefault("interpolation", "bilinear")
    n = config.get("num_classes")
    labels = config.get("labels") or ([f"class_{i}" for i in range(n)] if n else None)
    return {
        "format": format,
        "segzoo_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model": {k: config.get(k) for k in ("recipe", "head", "backbone") if config.get(k)},
        "num_classes": n,
        "labels": labels,
        "preprocessing": pre,
        "input": {"name": "x", "layout": "NCHW", "dtype": "float32", "normalised": True},
        "outputs": ["out", "aux"] if keep_aux else ["out"],
        "size": asdict(constraint),
    }


@contextlib.contextmanager
def _atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it on success (with normal permissions) and
    is removed on error. Own helper because the exporters need the right suffix on the temp name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(missing)}, which are not installed: "
            "pip install 'segzoo[export]'"
        )


def export(
    model: nn.Module | str,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    static: Sequence[int] | None = None,
    keep_aux: bool = False,
    multiple: int | None = None,
    max_size: int | None = None,
) -> Path:
    """Export ``model`` (or a name :func:`segzoo.create` accepts, with its weights) to ``path``.

    ``format``: ``"onnx"`` (torch's dynamo exporter, one file), ``"pt2"`` (``torch.export.save``;
    load with ``torch.export.load``) or ``"aoti"`` (an AOTInductor package for
    ``torch::inductor::AOTIModelPackageLoader`` in C++ or ``torch._inductor.aoti_load_package``).
    Batch, H and W are dynamic with the least constraint the model exports with (or H and W
    multiples of ``multiple``); ``static=(H, W)`` exports one size. ``keep_aux`` adds the ``aux``
    output. Writes ``path`` and ``path + ".json"`` (the metadata) atomically; returns ``path``.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if static is not None and (len(static) != 2 or any(int(s) < 1 for s in static)):
        raise UsageError(f"static must be two positive sizes (H, W), got {tuple(static)}")
    if multiple is not None and multiple < 1:
        raise UsageError(f"multiple must be a positive integer, got {multiple}")
    if format == "onnx":
        _require_onnx()
    if isinstance(model, str):
        model = create(model, pretrained=True)
    if keep_aux and getattr(model, "aux_classifier", None) is None:
        raise UsageError("keep_aux: this model has no auxiliary head (create it with aux=True)")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give the file to write, e.g. {path / ('model.' + format)}")
    path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    try:
        ep, constraint = export_program(
            model, static=static, keep_aux=keep_aux, multiple=multiple, max_size=max_size
        )
        meta = _metadata(model, format, constraint, keep_aux)
        text = json.dumps(meta, indent=2)
        sidecar = Path(f"{path}.json")
        with _atomic(path, ".onnx" if format == "onnx" else ".pt2") as tmp:
            _write(format, ep, tmp, text, keep_aux)
            with _atomic(sidecar, ".json") as tmp_json:
                tmp_json.write_text(text + "\n")
    finally:
        model.train(was_training)
    return path


def _write(format: str, ep: torch.export.ExportedProgram, tmp: Path, text: str, keep_aux: bool) -> None:
    if format == "pt2":
        torch.export.save(ep, tmp, extra_files={_PT2_EXTRA_FILE: text})
    elif format == "aoti":
        from torch._inductor import aoti_compile_and_package

        aoti_compile_and_package(
            ep, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": {METADATA_KEY: text}}
        )
    else:
        program = torch.onnx.export(
            ep,
            (),
            dynamo=True,
            verbose=False,
            input_names=["x"],
            output_names=["out", "aux"] if keep_aux else ["out"],
        )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.model.metadata_props[METADATA_KEY] = text
        program.save(tmp, external_data=False)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata an export wrote beside ``path`` (``path + ".json"``)."""
    sidecar = Path(f"{path}.json")
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ExportError(f"{sidecar} is missing: it is written by segzoo.export beside the model") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{sidecar} cannot be read as JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise ExportError(f"{sidecar} is not segzoo export metadata (no 'format' of {', '.join(FORMATS)})")
    return meta


class ExportedModel:
    """An exported file loaded for inference: ``m(x)`` returns ``{"out": ..., "aux": ...}`` as the
    model did. ONNX files run in onnxruntime, pt2 files through ``torch.export.load``, AOTInductor
    packages through ``aoti_load_package``."""

    def __init__(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.format = format or self.metadata["format"]
        self.outputs: list[str] = list(self.metadata.get("outputs") or ["out"])
        if self.format == "onnx":
            try:
                import onnxruntime as ort
            except ImportError:
                raise ExportError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        elif self.format == "pt2":
            self._module = torch.export.load(self.path).module()
        elif self.format == "aoti":
            from torch._inductor import aoti_load_package

            self._module = aoti_load_package(str(self.path))
        else:
            raise UsageError(f"unknown export format {self.format!r}: choose one of {', '.join(FORMATS)}")

    @property
    def size(self) -> SizeConstraint:
        s = dict(self.metadata["size"])
        if s.get("static") is not None:
            s["static"] = tuple(s["static"])
        return SizeConstraint(**s)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        if self.format == "onnx":
            results = self._session.run(None, {"x": x.detach().cpu().numpy()})
            tensors = [torch.from_numpy(r) for r in results]
        else:
            with torch.inference_mode():
                got = self._module(x)
            tensors = list(got) if isinstance(got, list | tuple) else [got]
        return dict(zip(self.outputs, tensors, strict=True))


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """Load a file written by :func:`export` (its metadata from ``path + ".json"``)."""
    return ExportedModel(path)
