"""The historian (ADR 0034): every diagnosis and every proposal outcome, with embeddings of their
context, in Postgres + pgvector; the optimizer asks it what fixed similar incidents before."""
