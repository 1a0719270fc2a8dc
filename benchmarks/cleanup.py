"""What every benchmark leaves behind and removes: the topics of its own prefix."""

from __future__ import annotations

import contextlib

from foundation.settings import Settings
from streams.admin import admin_client

__all__ = ["delete_prefix_topics"]


def delete_prefix_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Deletes every topic of ``settings.topic_prefix`` (a benchmark's own ``bench-…`` prefix);
    best effort: a benchmark's result must not be lost to a failed cleanup."""
    with contextlib.suppress(Exception):
        admin = admin_client(settings)
        prefix = settings.topic_prefix + "."
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=timeout).values():
                with contextlib.suppress(Exception):
                    future.result(timeout)
