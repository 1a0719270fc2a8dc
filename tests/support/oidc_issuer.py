"""A local OIDC issuer for tests: RSA keys generated here, their JWKS served over real HTTP
(``http.server`` on loopback, in a thread), and tokens signed with them.

``rotate()`` adds a new signing key (new ``kid``) to the served JWKS, as a real issuer does when
it rotates, so tests can check the API re-reads the JWKS on an unknown ``kid``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["LocalIssuer", "local_issuer"]


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class LocalIssuer:
    url: str
    """The issuer (``iss``); the JWKS is at ``jwks_url``."""
    audience: str = "reflux-api"
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)
    """The kids in the served JWKS."""
    jwks_requests: int = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    @property
    def kid(self) -> str:
        return self.served[-1]

    def rotate(self) -> str:
        kid = f"k-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = _new_key()
        self.served.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.served:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(
        self,
        *,
        sub: str = "alice",
        roles: Any = ("operator",),
        tenant: str | None = "acme",
        audience: str | None = None,
        issuer: str | None = None,
        expires_in: float = 300,
        not_before_in: float | None = None,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "aud": audience or self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + int(expires_in),
            "roles": list(roles) if not isinstance(roles, str) else roles,
        }
        if tenant is not None:
            claims["tenant"] = tenant
        if not_before_in is not None:
            claims["nbf"] = now + int(not_before_in)
        claims.update(extra or {})
        kid = kid or self.kid
        signer = key or self.keys[kid]
        return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid})


@contextlib.contextmanager
def local_issuer() -> Iterator[LocalIssuer]:
    issuer: LocalIssuer | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert issuer is not None
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            issuer.jwks_requests += 1
            body = json.dumps(issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer = LocalIssuer(url=f"http://127.0.0.1:{server.server_address[1]}")
    issuer.rotate()
    thread = threading.Thread(target=server.serve_forever, name="oidc-issuer", daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
