"""Tenants: who owns a workflow, its runs, its mutations, a node version, a secret grant.

A tenant is a name (:data:`TENANT_PATTERN`). Data of one tenant is invisible to every other
(ADR 0051): API reads and writes are scoped to the caller's tenant, runs carry their workflow's
tenant to the workers (secret grants, egress lists), and a run cannot start a child of another
tenant's workflow. :data:`DEFAULT_TENANT` is the tenant of everything written before tenancy, of
unauthenticated deployments, and of the platform's shared node catalog.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DEFAULT_TENANT", "PLATFORM_TENANT", "TENANT_PATTERN", "check_tenant_id"]

TENANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"

DEFAULT_TENANT: Final = "default"
"""The tenant of records that name none (written before tenancy) and of the local admin key."""

PLATFORM_TENANT: Final = DEFAULT_TENANT
"""Whose node versions every tenant may use, and whose admins provision other tenants (API
keys, audit); its workflows and runs are as private as any tenant's."""


def check_tenant_id(tenant: str) -> str:
    """``tenant`` when it is a valid tenant id, else :class:`ValueError` naming the pattern."""
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ValueError(f"Expected a tenant matching {TENANT_PATTERN}, but got {tenant!r}")
    return tenant
