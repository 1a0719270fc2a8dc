"""Worker groups: versioned nodes served from Kafka invoke topics (DESIGN.md section 5).

- :mod:`node_workers.node` -- the node model (``Node``, ``NodeContext``, errors, validation);
- :mod:`node_workers.nodes` -- the built-in nodes (``http.request``, ``transform``, ``condition``);
- :mod:`node_workers.registry` -- nodes by ``(name, major)`` and group selection (``--nodes``);
- :mod:`node_workers.concurrency` -- how many attempts run at once per workload class and group;
- :mod:`node_workers.runtime` -- ``WorkerRuntime``: consume, execute, publish, commit;
- :mod:`node_workers.cli` -- ``reflux worker``.

Importing this package (the node model, the nodes, the registry) does not import Kafka
clients: the scheduler and the API may read node flags and manifests without them. Import
:mod:`node_workers.runtime` for the worker itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node_workers.errors import NodeError, NonRetryableNodeError, RetryableNodeError
    from node_workers.node import AnyNode, Node, NodeContext, NodeModel, validate_params
    from node_workers.registry import NodeRegistry, default_registry

# Loaded on first use (PEP 562): importing one submodule -- ``reflux worker --help`` imports
# node_workers.cli -- must not load every built-in node and their clients (openai, numpy).
_LAZY = {
    "NodeError": "node_workers.errors",
    "NonRetryableNodeError": "node_workers.errors",
    "RetryableNodeError": "node_workers.errors",
    "AnyNode": "node_workers.node",
    "Node": "node_workers.node",
    "NodeContext": "node_workers.node",
    "NodeModel": "node_workers.node",
    "validate_params": "node_workers.node",
    "NodeRegistry": "node_workers.registry",
    "default_registry": "node_workers.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'node_workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AnyNode",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeModel",
    "NodeRegistry",
    "NonRetryableNodeError",
    "RetryableNodeError",
    "default_registry",
    "validate_params",
]
