"""``reflux forge openapi SPEC --operation ID``: a typed HTTP node from an OpenAPI operation.

The document is read and checked here (YAML or JSON, ``-`` for stdin), so a wrong operation or
an unsupported content type is reported before anything is sent. ``--dry-run`` prints the
artifact and stops; otherwise ``POST /v1/forge/openapi`` tests it in the sandbox and registers
a draft of the caller's tenant (docs/forge.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from node_workers.artifacts.bundle import NodeArtifact, artifact_digest
from node_workers.forge.openapi import artifact_from_openapi, load_openapi_text
from reflux.client import ClientError, _check, _guard
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json

__all__ = ["add_forge_openapi_command"]

# The sandbox test run (image start, tests) and the registration: seconds, not minutes; the
# API's own limit answers before this one on a stuck sandbox.
FORGE_TIMEOUT_S = 180.0
WAIT_MS = 10_000


def _read(spec: str) -> str:
    if spec == "-":
        return sys.stdin.read()
    try:
        return Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"Expected a readable OpenAPI document at {spec!r}, but {exc}") from exc


def _print_artifact(artifact: NodeArtifact) -> None:
    m = artifact.manifest
    print(f"{artifact.node_key}  {artifact_digest(artifact)}  (dry run: nothing registered)")
    print(f"  {m.description}")
    print(f"  egress {', '.join(m.egress) or '-'}  secrets {', '.join(m.secrets) or '-'}")
    inputs = m.input_schema.get("properties", {})
    print(
        f"  input  {', '.join(inputs) or '-'} (required: {', '.join(m.input_schema['required'])})"
    )
    for warning in artifact.provenance.get("warnings") or []:
        print(f"  warning: {warning}")
    for name, text in artifact.files.items():
        print(f"\n# ---- {name} ----\n{text}", end="")


def _forge_openapi(args: argparse.Namespace) -> int:
    document = load_openapi_text(_read(args.spec))
    options: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "secret": args.secret,
        "server_url": args.server,
    }
    if args.dry_run:
        artifact = artifact_from_openapi(document, args.operation, **options)
        if args.json:
            print_json({"digest": artifact_digest(artifact), **artifact.model_dump(mode="json")})
        else:
            _print_artifact(artifact)
        return 0
    artifact_from_openapi(document, args.operation, **options)  # refuse locally, before sending
    body = {"document": document, "operation_id": args.operation, **options}
    with api_client(args.api, timeout=FORGE_TIMEOUT_S) as client:
        answer = _check(
            client.post(
                "/v1/forge/openapi",
                json={k: v for k, v in body.items() if v is not None},
                params={"wait_ms": WAIT_MS},
            )
        )
    if args.json:
        print_json(answer)
        return 0
    t = answer["timings"]
    passed = sum(1 for test in answer["tests"] if test["passed"])
    share = t["sandbox_s"] / t["total_s"] if t["total_s"] else 0.0
    print(f"{answer['name']}@{answer['version']}  {answer['status']}  {answer['digest']}")
    print(f"  tests: {passed}/{len(answer['tests'])} passed in the sandbox")
    print(
        f"  timings: generate {t['generate_s']:.2f}s, sandbox {t['sandbox_s']:.2f}s "
        f"({share:.0%}), register {t['register_s']:.2f}s, total {t['total_s']:.2f}s"
    )
    print(f"  egress {', '.join(answer['egress'])}  secrets {', '.join(answer['secrets']) or '-'}")
    for warning in answer.get("warnings") or []:
        print(f"  warning: {warning}")
    print(f"  promote: POST /v1/nodes/{answer['name']}/versions/{answer['version']}/promote")
    return 0


def add_forge_openapi_command(actions: Any, default_api: str) -> None:
    parser = actions.add_parser(
        "openapi",
        help="a typed HTTP node from an OpenAPI 3 operation: tested in the sandbox, "
        "registered as a draft",
    )
    parser.add_argument("spec", help="OpenAPI 3.0/3.1 document, YAML or JSON ('-': stdin)")
    parser.add_argument("--operation", required=True, metavar="ID", help="its operationId")
    parser.add_argument("--name", help="node name (default: <api title slug>.<operation slug>)")
    parser.add_argument("--version", default="0.1.0", help="node version (default 0.1.0)")
    parser.add_argument(
        "--secret",
        metavar="NAME",
        help="secret bound to the security scheme (default: from its name, e.g. PETSTORE_API_KEY)",
    )
    parser.add_argument("--server", metavar="URL", help="base URL instead of the document's")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the generated artifact; register nothing"
    )
    parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
    add_json_flag(parser)
    parser.set_defaults(handler=_guard(_forge_openapi))
