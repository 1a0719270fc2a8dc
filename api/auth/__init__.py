"""Identity, roles and audit of the HTTP API (ADR 0046, docs/api.md#authentication-and-roles).

- :mod:`api.auth.roles`: the four roles and the per-route table of what each /v1 route needs;
- :mod:`api.auth.keys`: API keys, stored hashed in the API's own Postgres schema;
- :mod:`api.auth.oidc`: OIDC bearer tokens (JWT) checked against the issuer's JWKS;
- :mod:`api.auth.guard`: the dependency on the /v1 router that authenticates and authorizes;
- :mod:`api.auth.audit`: the middleware that publishes every write to the ``audit`` topic;
- :mod:`api.auth.openapi`: security schemes and 401/403 answers in the OpenAPI document.
"""
