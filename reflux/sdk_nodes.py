"""Custom nodes as code, the public surface: ``from reflux.sdk_nodes import node``.

Serve a module of ``@node`` functions with ``reflux worker --module mypkg.nodes``
(docs/sdk-nodes.md, docs/decisions/0059-custom-nodes-as-code.md).
"""

from __future__ import annotations

from node_workers.function_nodes import (
    FunctionNode,
    NodeDefinitionError,
    discover_nodes,
    load_module_nodes,
    node,
)
from node_workers.node import NodeContext, NodeModel, NonRetryableNodeError, RetryableNodeError

__all__ = [
    "FunctionNode",
    "NodeContext",
    "NodeDefinitionError",
    "NodeModel",
    "NonRetryableNodeError",
    "RetryableNodeError",
    "discover_nodes",
    "load_module_nodes",
    "node",
]
