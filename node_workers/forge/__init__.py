"""The node forge: node artifacts made from an OpenAPI operation or from a description, tested
in the sandbox and registered as drafts (docs/forge.md, docs/decisions/0071-forge.md)."""
