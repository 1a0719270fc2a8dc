"""The node forge: new artifact nodes from an OpenAPI operation (``openapi``) or a description
(``llm``), tested in the sandbox and registered as drafts (``pipeline``); ADR 0071."""
