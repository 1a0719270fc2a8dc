"""Where the secrets of one attempt may be sent: the check a node makes before each request.

The resolver knows which names it substituted into a step's params and each name's ``hosts``
(grants.yaml); it hands the attempt a :class:`SecretDestinations`. A node that sends to a
destination the workflow chose (``http.request``, ``openai.chat``, ``email.send``) calls
:meth:`SecretDestinations.check` with the host and port it is about to reach, before anything is
sent: for the step's own destination every secret of the params counts as carried (whatever the
node does with them, they go there); for a redirect hop, which the server chose, only the secrets
whose value (or a common encoding of it, as the redactor knows them) is in the hop's URL, headers
or body. A secret carried to a host outside its list fails the step with non-retryable
``SecretHostDenied`` (docs/decisions/0050-secret-grants-versions-hosts.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node_workers.secrets.errors import SecretHostDenied
from node_workers.secrets.grants import SecretRule

__all__ = ["SecretDestinations", "UsedSecret"]


@dataclass(frozen=True, slots=True)
class UsedSecret:
    name: str
    rule: SecretRule
    forms: frozenset[str]
    """The value and its encodings (never printed)."""

    def __repr__(self) -> str:  # no value in a repr, ever
        return f"UsedSecret({self.name!r})"


@dataclass(frozen=True, slots=True)
class SecretDestinations:
    """The secrets resolved into one attempt's params and their allowed hosts."""

    used: tuple[UsedSecret, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.used)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.used)

    def carried_by(self, parts: Iterable[str | bytes]) -> tuple[UsedSecret, ...]:
        """The secrets whose value (in a known encoding) occurs in one of ``parts``."""
        texts = [
            p.decode("utf-8", errors="replace") if isinstance(p, bytes) else p for p in parts if p
        ]
        return tuple(s for s in self.used if any(f in t for t in texts for f in s.forms))

    def check(
        self,
        host: str,
        port: int,
        *,
        node: str,
        target: str,
        parts: Iterable[str | bytes] | None = None,
    ) -> None:
        """Raise :class:`SecretHostDenied` if a carried secret may not go to ``host:port``.

        ``parts=None``: the step's own destination, every secret counts as carried; else only
        those found in ``parts`` (a redirect hop's URL, header values, body)."""
        if not self.used:
            return
        carried = self.used if parts is None else self.carried_by(parts)
        for secret in carried:
            if not secret.rule.host_allowed(host, port):
                raise SecretHostDenied(
                    f"{node} would send secret {secret.name!r} to {host}:{port} ({target}), "
                    f"which is not among the hosts it may be sent to "
                    f"({secret.rule.describe_hosts()}); nothing was sent. Send it to one of "
                    f"those hosts, or ask the operator to add {host} to the hosts of "
                    f"{secret.name!r} in grants.yaml"
                )

    def require_any_host(self, *, node: str, why: str) -> None:
        """Refuse secrets limited to some hosts for a node that can send anywhere unchecked
        (``code.run`` with network): its destinations cannot be checked, so only a secret whose
        hosts say ``*`` (or a legacy grant) may go there."""
        for secret in self.used:
            if not secret.rule.any_host:
                raise SecretHostDenied(
                    f"{node} cannot be given secret {secret.name!r}: {why}, and the secret may "
                    f"only be sent to {secret.rule.describe_hosts()}; nothing was run. Turn the "
                    f"step's network off, or call those hosts with http.request"
                )
