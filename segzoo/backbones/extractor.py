"""FeatureExtractor: any ``nn.Module`` as a backbone returning named features."""

from __future__ import annotations

import difflib
import functools
import itertools
import linecache
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["Feature", "FeatureExtractor", "FeatureInfo"]

Method = Literal["auto", "fx", "hooks", "outputs"]

# Roles are the feature names heads ask for by default. A backbone may map them to its own
# feature names; otherwise they fall back to the rules in FeatureInfo.resolve.
ROLES = ("out", "aux", "low")


@dataclass(frozen=True)
class Feature:
    """One feature map a backbone returns."""

    name: str
    channels: int
    reduction: int
    node: str


class FeatureInfo(Sequence[Feature]):
    """The features of a backbone, shallow to deep, with the roles heads look them up by.

    ``resolve(key)`` accepts a feature name, a role (``out``: the deepest feature, ``aux``: the
    one before it, ``low``: the first at reduction 8) or ``strideN`` (the first feature at
    reduction N). Roles given by the backbone win over those rules.
    """

    def __init__(self, features: Sequence[Feature], roles: Mapping[str, str] | None = None) -> None:
        self._features = tuple(features)
        if not self._features:
            raise UsageError("a backbone must return at least one feature")
        self._by_name = {f.name: f for f in self._features}
        if len(self._by_name) != len(self._features):
            raise UsageError(f"feature names must be unique, got {[f.name for f in self._features]}")
        self.roles = dict(roles or {})
        for role, name in self.roles.items():
            if name not in self._by_name:
                raise UsageError(f"role {role!r} points at {name!r}, which is not a feature: {self.names()}")

    def __len__(self) -> int:
        return len(self._features)

    def __iter__(self) -> Iterator[Feature]:
        return iter(self._features)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self._by_name[key]
        return self._features[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_name

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FeatureInfo) and self._features == other._features and self.roles == other.roles
        )

    def __repr__(self) -> str:
        feats = ", ".join(f"{f.name}: {f.channels}ch /{f.reduction}" for f in self._features)
        return f"FeatureInfo({feats}; roles={self.roles})"

    def names(self) -> list[str]:
        return [f.name for f in self._features]

    def channels(self) -> list[int]:
        return [f.channels for f in self._features]

    def reductions(self) -> list[int]:
        return [f.reduction for f in self._features]

    def to_list(self) -> list[dict[str, Any]]:
        roles_of = {}
        for role, name in self.roles.items():
            roles_of.setdefault(name, []).append(role)
        return [{**asdict(f), "roles": roles_of.get(f.name, [])} for f in self._features]

    def resolve(self, key: str) -> Feature:
        """The feature for a name, a role or ``strideN``; a clear error if there is none."""
        if key in self._by_name:
            return self._by_name[key]
        if key in self.roles:
            return self._by_name[self.roles[key]]
        if key == "out":
            return self._features[-1]
        if key == "aux":
            if len(self._features) < 2:
                raise UsageError(
                    f"this backbone returns a single feature ({self.names()}), so there is none for the "
                    "auxiliary head; use aux=False or a backbone with two or more features"
                )
            return self._features[-2]
        stride = 8 if key == "low" else _parse_stride(key)
        if stride is not None:
            for f in self._features:
                if f.reduction == stride:
                    return f
            raise UsageError(
                f"no feature at reduction {stride} for {key!r}; this backbone has "
                f"{', '.join(f'{f.name} (/{f.reduction})' for f in self._features)}. "
                "Pass the feature name to the head explicitly."
            )
        close = difflib.get_close_matches(key, [*self.names(), *ROLES], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UsageError(
            f"unknown feature {key!r}: the backbone has {self.names()} and the roles {list(ROLES)}.{hint}"
        )


def _parse_stride(key: str) -> int | None:
    if key.startswith("stride") and key[6:].isdigit():
        return int(key[6:])
    return None


def _call_key() -> int:
    """Which forward call a hook belongs to: the thread, so that concurrent calls of one model do
    not mix their features (0 under torch.compile, which runs one call at a time per frame)."""
    return 0 if torch.compiler.is_compiling() else threading.get_ident()


class _StopForward(BaseException):
    """Raised from a hook once every requested feature is captured (BaseException so that a
    wrapped module's own ``except Exception`` cannot swallow it)."""


_fx_counter = itertools.count()


def _compile_graph(graph: torch.fx.Graph) -> Callable[..., dict[str, Tensor]]:
    """Python function ``forward(self, x)`` for an FX graph whose modules live on ``self``."""
    code = graph.python_code(root_module="self")
    filename = f"<segzoo-fx-{next(_fx_counter)}>"
    # Registered like torch.fx does, so tracebacks through the generated code show its lines.
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)
    return namespace["forward"]


class _Captures:
    """The hooks' side of hooks mode: per-call captures, keyed by thread (see _call_key).

    A separate object, not the extractor, so that the hooks (kept by submodules of the wrapped
    module) make no reference cycle through the extractor: a cycle would keep a dropped model, and
    the memory-mapped weights file under it, alive until the next garbage collection.
    """

    def __init__(self) -> None:
        # per call: the outputs captured so far and the names the call needs
        self.calls: dict[int, tuple[dict[str, Tensor], frozenset[str]]] = {}

    def hook(self, name: str, _module: nn.Module, _inputs: Any, output: Any) -> None:
        """Forward hook, registered once: keep a requested output of the current call."""
        call = self.calls.get(_call_key())
        if call is None:
            return  # the wrapped module runs outside this extractor's forward
        captured, wanted = call
        captured[name] = output
        # The rest of the module is not needed. Under torch.compile the forward runs to its end
        # instead, since raising out of a hook would split the graph.
        if wanted <= captured.keys() and not torch.compiler.is_compiling():
            raise _StopForward


class FeatureExtractor(nn.Module):
    """Wrap any ``nn.Module`` so that it returns an ordered ``dict[str, Tensor]`` of named features.

    ``return_nodes`` maps node names of the wrapped module (module paths such as ``"layer3"``, or
    any node of its FX graph) to the names of the returned features; a list keeps the node names.
    The module is traced with torchvision's FX feature extraction (only what the returned features
    need is kept); when it cannot be traced, forward hooks on the named submodules are used
    instead. With ``method="outputs"`` the module's own forward already returns the features (a
    dict or a list, as timm's ``features_only`` models do) and ``return_nodes`` maps its keys or
    positions to names.

    The wrapped module's parameter names are kept unchanged (``conv1.weight``, not
    ``module.conv1.weight``), so its checkpoints load into the extractor as they are.
    ``feature_info`` gives each feature's channels and reduction; it is measured with one forward
    on the meta device unless passed in.
    """

    def __init__(
        self,
        module: nn.Module,
        return_nodes: Mapping[str, str] | Sequence[str],
        *,
        roles: Mapping[str, str] | None = None,
        method: Method = "auto",
        tracer_kwargs: dict[str, Any] | None = None,
        feature_info: Sequence[Feature] | None = None,
        probe_size: int = 256,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise UsageError(f"FeatureExtractor wraps an nn.Module, got {type(module).__name__}")
        nodes = _normalize_return_nodes(return_nodes)
        self.return_nodes: dict[str, str] = nodes
        self.wrapped_class = type(module).__name__
        self._fx_forward: tuple[Callable, Callable] | None = None
        self._graphs: tuple[torch.fx.Graph, torch.fx.Graph] | None = None
        self._body: nn.Module | None = None
        if method not in ("auto", "fx", "hooks", "outputs"):
            raise UsageError(f"method must be 'auto', 'fx', 'hooks' or 'outputs', got {method!r}")

        if method in ("auto", "fx"):
            try:
                self._init_fx(module, nodes, tracer_kwargs)
                method = "fx"
            except Exception as err:
                if method == "fx" or not all(_has_submodule(module, n) for n in nodes):
                    missing = [n for n in nodes if not _has_submodule(module, n)]
                    raise UsageError(_trace_error(module, missing, err)) from err
                method = "hooks"
        if method == "hooks":
            missing = [n for n in nodes if not _has_submodule(module, n)]
            if missing:
                raise UsageError(_missing_module_error(module, missing))
            self._share_state(module)
            # hooks registered once, as torch.compile traces them into one graph where hooks
            # added per call would split it
            self._captures = _Captures()
            for node, name in nodes.items():
                module.get_submodule(node).register_forward_hook(functools.partial(self._captures.hook, name))
        elif method == "outputs":
            self._share_state(module)
        self.method: str = method

        if feature_info is None:
            feature_info = self._probe(probe_size)
        self.feature_info = FeatureInfo(feature_info, roles)
        if self.feature_info.names() != list(nodes.values()):
            raise UsageError(
                f"feature_info names {self.feature_info.names()} do not match the returned features "
                f"{list(nodes.values())}"
            )

    # -- construction -------------------------------------------------------------------------

    def _init_fx(self, module: nn.Module, nodes: dict[str, str], tracer_kwargs: dict | None) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        gm = create_feature_extractor(
            module, return_nodes=dict(nodes), tracer_kwargs=tracer_kwargs, suppress_diff_warning=True
        )
        graphs = (gm.eval_graph, gm.train_graph)
        for g in graphs:
            g.owning_module = None  # the extractor, not the GraphModule, owns the modules now
        self._share_state(gm)
        self._graphs = graphs
        self._fx_forward = tuple(_compile_graph(g) for g in graphs)  # type: ignore[assignment]

    def _share_state(self, body: nn.Module) -> None:
        # Share the body's own dicts of children, parameters and buffers instead of holding the
        # body as a child: names stay exactly those of the wrapped module, and whatever replaces a
        # tensor (load_state_dict(assign=True), .to()) is seen by the body too. deepcopy and
        # pickle keep the sharing since both objects reference the same dicts.
        object.__setattr__(self, "_modules", body._modules)
        object.__setattr__(self, "_parameters", body._parameters)
        object.__setattr__(self, "_buffers", body._buffers)
        object.__setattr__(self, "_non_persistent_buffers_set", body._non_persistent_buffers_set)
        if not isinstance(body, torch.fx.GraphModule):
            # Called directly by forward; kept off nn.Module's bookkeeping so it is not a child.
            object.__setattr__(self, "_body", body)

    def _probe(self, size: int) -> list[Feature]:
        """Channels and reduction of each feature from one forward in eval mode: on the meta
        device (no compute, no memory) where every op supports it, else on the module's device."""
        from torch.func import functional_call

        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                try:
                    tensors = {
                        k: torch.empty_like(v, device="meta")
                        for k, v in itertools.chain(self.named_parameters(), self.named_buffers())
                    }
                    feats = functional_call(self, tensors, (torch.empty(1, 3, size, size, device="meta"),))
                except (NotImplementedError, RuntimeError):
                    device = next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device
                    feats = self(torch.zeros(1, 3, size, size, device=device))
        finally:
            self.train(was_training)
        info = []
        for node, name in self.return_nodes.items():
            t = feats[name]
            if t.ndim != 4:
                raise UsageError(
                    f"feature {name!r} (node {node!r}) has shape {tuple(t.shape)}; segmentation heads need "
                    "N x C x H x W maps. Pick a node with a spatial output, or reshape tokens in your module."
                )
            info.append(Feature(name, int(t.shape[1]), max(1, round(size / t.shape[-1])), node))
        return info

    # -- behaviour ----------------------------------------------------------------------------

    def forward(self, x: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The features, by name; ``names`` asks for some of them only (in hooks mode the wrapped
        forward then stops at the last one: a head that reads stride 8 does not pay for 16 and 32)."""
        if names is not None:
            unknown = [n for n in names if n not in self.return_nodes.values()]
            if unknown:
                raise UsageError(
                    f"unknown feature names {unknown}: this extractor returns {self.feature_info.names()}"
                )
        if self._fx_forward is not None:
            out = self._fx_forward[self.training](self, x)
        elif self.method == "outputs":
            out = self._run_outputs(x)
        else:
            return self._run_with_hooks(x, self.return_nodes.values() if names is None else names)
        return out if names is None else {n: out[n] for n in names}

    def _run_outputs(self, x: Tensor) -> dict[str, Tensor]:
        out = self._body(x)
        if isinstance(out, Mapping):
            return {name: out[key] for key, name in self.return_nodes.items()}
        return {name: out[int(key)] for key, name in self.return_nodes.items()}

    def _run_with_hooks(self, x: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
        key = _call_key()
        names = list(names)
        captured: dict[str, Tensor] = {}
        self._captures.calls[key] = (captured, frozenset(names))
        try:
            self._body(x)
        except _StopForward:
            pass
        finally:
            del self._captures.calls[key]
        missing = [n for n in names if n not in captured]
        if missing:
            raise RuntimeError(f"the wrapped {self.wrapped_class}'s forward never ran the nodes of {missing}")
        return {name: captured[name] for name in names}

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        if self._body is not None:
            self._body.training = mode  # the body is not a child, so nn.Module.train misses it
        return self

    def extra_repr(self) -> str:
        return f"wraps={self.wrapped_class}, method={self.method}, features={self.feature_info.names()}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fx_forward"] = None  # generated functions do not pickle; rebuilt from the graphs
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._graphs is not None:
            self._fx_forward = tuple(_compile_graph(g) for g in self._graphs)


def _normalize_return_nodes(return_nodes: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(return_nodes, str):
        raise UsageError("return_nodes must be a dict {node: name} or a list of node names, not a string")
    if isinstance(return_nodes, Mapping):
        nodes = {str(k): str(v) for k, v in return_nodes.items()}
    else:
        nodes = {str(n): str(n) for n in return_nodes}
    if not nodes:
        raise UsageError("return_nodes is empty: name at least one node, e.g. {'layer4': 'out'}")
    if len(set(nodes.values())) != len(nodes):
        raise UsageError(f"return_nodes gives two nodes the same name: {nodes}")
    return nodes


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _missing_module_error(module: nn.Module, missing: list[str], candidates: list[str] | None = None) -> str:
    names = candidates if candidates is not None else [n for n, _ in module.named_modules() if n]
    parts = []
    for m in missing:
        close = difflib.get_close_matches(m, names, n=3)
        parts.append(f"{m!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    return (
        f"{type(module).__name__} has no node {', '.join(parts)}; its top-level modules are "
        f"{[n for n, _ in module.named_children()]}"
    )


def _trace_error(module: nn.Module, missing: list[str], err: Exception) -> str:
    """One message for a failed FX extraction: unknown node names, or a module FX cannot trace."""
    if not missing:
        return f"could not trace {type(module).__name__} with torch.fx: {type(err).__name__}: {err}"
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        graph_nodes = list(dict.fromkeys(itertools.chain(*get_graph_node_names(module))))
    except Exception:
        graph_nodes = []  # untraceable: module paths are all there is
    candidates = graph_nodes + [n for n, _ in module.named_modules() if n and n not in graph_nodes]
    not_nodes = [n for n in missing if n not in graph_nodes]
    msg = _missing_module_error(module, not_nodes or missing, candidates)
    if graph_nodes and not not_nodes:
        msg = f"could not trace {type(module).__name__} with torch.fx ({err}), and {msg}"
    return msg + (
        ". Name module paths (dict(module.named_modules())) or FX graph nodes "
        "(torchvision.models.feature_extraction.get_graph_node_names(module))."
    )
