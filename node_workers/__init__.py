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

from node_workers.errors import NodeError, NonRetryableNodeError, RetryableNodeError
from node_workers.node import AnyNode, Node, NodeContext, NodeModel, validate_params
from node_workers.registry import NodeRegistry, default_registry

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
