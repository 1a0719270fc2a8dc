"""Per-tenant rate limits and daily run quotas in Redis (ADR 0049; docs/api.md, Rate limits).

- :mod:`api.ratelimit.bucket`: the token-bucket arithmetic, as a pure function and as the Lua
  script that runs it atomically in Redis (the two are tested against each other);
- :mod:`api.ratelimit.policy`: which buckets a request takes from and their limits (defaults in
  :class:`api.config.ApiSettings`, per-tenant overrides);
- :mod:`api.ratelimit.store`: the Redis side, with the fail-open / fail-closed policy;
- :mod:`api.ratelimit.middleware`: the ASGI middleware (after authentication, before the body).
"""
