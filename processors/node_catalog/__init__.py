"""The node catalog: version lifecycle, gradual rollout and the scheduler's catalog view.

Pure parts (no I/O): :mod:`.rollout` (which version a run gets), :mod:`.state` (the catalog
folded from ``NodeCatalogEntry`` records), :mod:`.transitions` (draft -> staging -> production
-> deprecated). The Kafka edge: :mod:`.runtime_view` (import it explicitly; it needs a broker).
"""

from processors.node_catalog.rollout import (
    CatalogVersion,
    NodeVersionUnavailableError,
    choose_version,
    describe_versions,
    rollout_point,
    shares,
)
from processors.node_catalog.state import CatalogState, catalog_key
from processors.node_catalog.transitions import (
    TransitionError,
    check_weight,
    deprecated,
    promoted,
    reweighted,
)

__all__ = [
    "CatalogState",
    "CatalogVersion",
    "NodeVersionUnavailableError",
    "TransitionError",
    "catalog_key",
    "check_weight",
    "choose_version",
    "deprecated",
    "describe_versions",
    "promoted",
    "reweighted",
    "rollout_point",
    "shares",
]
