"""Session-wide pytest configuration: how xdist spreads the suite over its processes.

``make test`` runs with ``--dist loadfile``: a file is a unit of work, so a module and its
module-scoped fixtures (such as the one process that may own a chdb store) stay together. Here
that scheduling is replaced by the same one in which the files of one group in
tests/support/xdist_groups.py form a single unit: one process runs them one after the other.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.support.xdist_groups import scope_of


class FileOrGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """loadscope with a file, or a group of files, as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    if config.getvalue("dist") != "loadfile":
        return None
    return FileOrGroupScheduling(config, log)
