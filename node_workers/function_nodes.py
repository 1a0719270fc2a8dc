"""Custom nodes as code: a typed Python function becomes a node version (docs/sdk-nodes.md).

``@node("acme.greet", version="1.2.0")`` on a function taking a pydantic input model (and
optionally the :class:`~node_workers.node.NodeContext`) and returning a pydantic output model
builds a :class:`FunctionNode` -- an ordinary :class:`~node_workers.node.Node`, so the worker
runtime, the registry, the catalog registration and the invoke topics treat it exactly like a
built-in. The function itself is returned unchanged (still callable in unit tests); the node
hangs off it as ``__reflux_node__``, where :func:`discover_nodes` finds it.

The public import is ``reflux.sdk_nodes`` (``reflux.sdk``); the implementation lives here
because ``node_workers`` is below ``reflux`` in the package layers and ``reflux worker
--module`` (node_workers.cli) discovers the nodes (docs/decisions/0059-custom-nodes-as-code.md).

Everything that can be checked when the decorator runs is checked then, so a bad signature
fails the import of the module (and the worker's start), not the first invocation.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from foundation.errors import ConfigurationError
from node_workers.node import AnyNode, Node, NodeContext, NonRetryableNodeError, Workload

__all__ = [
    "NODE_ATTRIBUTE",
    "FunctionNode",
    "NodeDefinitionError",
    "discover_nodes",
    "load_module_nodes",
    "node",
]

NODE_ATTRIBUTE: Final = "__reflux_node__"
"""Attribute of a decorated function holding its :class:`FunctionNode`."""

F = TypeVar("F", bound=Callable[..., Any])


class NodeDefinitionError(ConfigurationError):
    """A decorated function or a ``--module`` cannot become a node."""

    error_class = "NodeDefinition"


def _output_path(loc: Sequence[int | str]) -> str:
    out = "output"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class FunctionNode(Node[Any, Any]):
    """A node version whose ``execute`` calls a user function (async, or sync in a thread)."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str,
        version: str,
        input_model: type[BaseModel],
        output_model: type[BaseModel],
        pass_context: bool,
        cacheable: bool,
        side_effects: bool,
        idempotent: bool,
        workload: Workload,
        description: str,
    ) -> None:
        self.func = func
        self.name = name
        self.version = version
        self.Input = input_model
        self.Output = output_model
        self.pass_context = pass_context
        self.cacheable = cacheable
        self.side_effects = side_effects
        self.idempotent = idempotent
        """Running it twice for the same idempotency key has the effect of running it once;
        recorded in the catalog manifest for operators and the learning loop."""
        self.workload = workload
        self.description = description
        self.is_async = inspect.iscoroutinefunction(func)

    def manifest(self) -> dict[str, Any]:
        return {
            **super().manifest(),
            "idempotent": self.idempotent,
            "source": f"{self.func.__module__}.{self.func.__qualname__}",
        }

    async def execute(self, params: Any, ctx: NodeContext) -> Any:
        args = (params, ctx) if self.pass_context else (params,)
        if self.is_async:
            result = await typing.cast(Awaitable[Any], self.func(*args))
        else:
            # A sync function may block (a client library, a computation): never on the loop.
            result = await asyncio.to_thread(self.func, *args)
        return self.validate_output(result)

    def validate_output(self, result: Any) -> BaseModel:
        """The output model from what the function returned: a model of another type, a
        ``model_construct``-ed or mutated instance, or a dict are all checked against ``Output``;
        a mismatch fails the step for good (another attempt returns the same)."""
        if isinstance(result, BaseModel):
            if type(result) is not self.Output and not isinstance(result, self.Output):
                raise NonRetryableNodeError(
                    f"Expected {self.key} to return {self.Output.__name__}, but it returned "
                    f"{type(result).__name__}",
                    error_class="InvalidOutput",
                )
            # warnings off: a wrongly typed field is reported below, by validation, with its path
            raw: Any = result.model_dump(by_alias=True, warnings=False)
        elif isinstance(result, dict):
            raw = result
        else:
            raise NonRetryableNodeError(
                f"Expected {self.key} to return {self.Output.__name__}, but it returned "
                f"{type(result).__name__}",
                error_class="InvalidOutput",
            )
        try:
            return typing.cast(BaseModel, self.Output.model_validate(raw))
        except ValidationError as exc:
            details = "; ".join(f"{_output_path(e['loc'])}: {e['msg']}" for e in exc.errors())
            raise NonRetryableNodeError(
                f"Expected {self.key} to return a valid {self.Output.__name__}, but {details}",
                error_class="InvalidOutput",
            ) from exc


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _signature(func: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel], bool]:
    """``(Input, Output, pass_context)`` from the function's annotations, or a clear error."""
    where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # an annotation naming something undefined
        raise NodeDefinitionError(
            f"Expected the annotations of node function {where} to resolve, but: {exc}"
        ) from exc
    params = list(inspect.signature(func).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not 1 <= len(params) <= 2 or any(p.kind not in positional for p in params):
        raise NodeDefinitionError(
            f"Expected node function {where} to take (params: <InputModel>) or "
            f"(params: <InputModel>, ctx: NodeContext), but its signature is "
            f"{inspect.signature(func)}"
        )
    first = hints.get(params[0].name)
    if not _is_model(first):
        raise NodeDefinitionError(
            f"Expected the parameter {params[0].name!r} of node function {where} to be annotated "
            f"with a pydantic model (the node's input), but it is {first!r}"
        )
    if len(params) == 2 and hints.get(params[1].name) is not NodeContext:
        raise NodeDefinitionError(
            f"Expected the second parameter {params[1].name!r} of node function {where} to be "
            f"annotated with NodeContext, but it is {hints.get(params[1].name)!r}"
        )
    output = hints.get("return")
    if not _is_model(output):
        raise NodeDefinitionError(
            f"Expected node function {where} to declare a pydantic model as its return type "
            f"(the node's output), but it declares {output!r}"
        )
    return (
        typing.cast(type[BaseModel], first),
        typing.cast(type[BaseModel], output),
        len(params) == 2,
    )


def node(
    name: str,
    *,
    version: str | None = None,
    side_effects: bool = False,
    idempotent: bool = False,
    cacheable: bool = False,
    workload: Workload | str = Workload.IO,
    description: str | None = None,
) -> Callable[[F], F]:
    """Make a function a node version; see the module docstring. ``description`` defaults to
    the function's docstring. ``cacheable`` with ``side_effects`` is refused: a cached side
    effect would silently not happen."""
    if callable(name):  # bare @node
        raise NodeDefinitionError(
            'Expected @node("name", version="X.Y.Z"), but @node was used without arguments'
        )
    if version is None:
        raise NodeDefinitionError(
            f'Expected @node({name!r}, version="X.Y.Z"), but no version was given (the major '
            "selects the invoke topic; workflows pick versions by semver range)"
        )
    node_version: str = version
    if cacheable and side_effects:
        raise NodeDefinitionError(
            f"Expected node {name!r} to be cacheable or to have side effects, not both (a cached "
            "attempt would skip its side effect)"
        )
    try:
        kind = workload if isinstance(workload, Workload) else Workload(workload)
    except ValueError:
        raise NodeDefinitionError(
            f"Expected workload of node {name!r} to be 'io' or 'cpu', but got {workload!r}"
        ) from None

    def decorate(func: F) -> F:
        if not callable(func) or inspect.isclass(func):
            raise NodeDefinitionError(
                f"Expected @node({name!r}) on a function, but it decorates {func!r}"
            )
        if getattr(func, NODE_ATTRIBUTE, None) is not None:
            raise NodeDefinitionError(
                f"Expected one @node per function, but {func.__qualname__} has two"
            )
        input_model, output_model, pass_context = _signature(func)
        built = FunctionNode(
            func,
            name=name,
            version=node_version,
            input_model=input_model,
            output_model=output_model,
            pass_context=pass_context,
            cacheable=cacheable,
            side_effects=side_effects,
            idempotent=idempotent,
            workload=kind,
            description=description
            if description is not None
            else inspect.cleandoc(func.__doc__ or ""),
        )
        try:
            built.check()  # name and semver, with the node's words
        except ValueError as exc:
            raise NodeDefinitionError(f"Expected a valid node {name!r}: {exc}") from exc
        # Also the schemas: a model pydantic cannot describe must fail here, not at registration.
        try:
            built.manifest()
        except Exception as exc:
            raise NodeDefinitionError(
                f"Expected the models of node {built.key} to have JSON schemas, but: {exc}"
            ) from exc
        setattr(func, NODE_ATTRIBUTE, built)
        return func

    return decorate


def discover_nodes(module: ModuleType) -> list[AnyNode]:
    """The nodes of the decorated functions a module defines or imports, in definition order."""
    found: list[AnyNode] = []
    for value in vars(module).values():
        built = getattr(value, NODE_ATTRIBUTE, None) if callable(value) else None
        if isinstance(built, FunctionNode) and all(built is not f for f in found):
            found.append(built)
    return found


def load_module_nodes(modules: Iterable[str], builtin_names: Iterable[str] = ()) -> list[AnyNode]:
    """Import each module and collect its nodes. A module that cannot be imported, that holds
    no node, or a node that takes a built-in's name is an error: a worker must not start
    serving less (or other) than it was told to."""
    builtins = set(builtin_names)
    nodes: list[AnyNode] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise NodeDefinitionError(
                f"Expected --module {module_name!r} to be importable, but: {exc}"
            ) from exc
        found = discover_nodes(module)
        if not found:
            raise NodeDefinitionError(
                f"Expected --module {module_name!r} to define @node functions, but it has none"
            )
        for built in found:
            if built.name in builtins:
                raise NodeDefinitionError(
                    f"Expected custom node names apart from the built-ins, but {module_name} "
                    f"defines {built.key}"
                )
            if all(built is not n for n in nodes):
                nodes.append(built)
    return nodes
