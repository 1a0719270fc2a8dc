"""``reflux workflows list|show`` and ``reflux nodes list|show``: what the API's catalogs hold.

Read commands (``--json`` prints the API's body as is); registering goes through ``reflux run``
(a workflow file), the SDK or ``POST /v1/nodes``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from reflux.client import _check, _guard
from reflux.credentials import api_client
from reflux.output import add_json_flag, print_json

__all__ = ["add_catalog_commands"]


def _get(args: argparse.Namespace, path: str, params: dict[str, Any] | None = None) -> Any:
    with api_client(args.api, timeout=30) as client:
        return _check(client.get(path, params=params))


def _workflows_list(args: argparse.Namespace) -> int:
    body = _get(args, "/v1/workflows")
    if args.json:
        print_json(body)
        return 0
    for w in body["data"]:
        print(
            f"{w['workflow_id']:<32} v{w['latest_version']:<4} {w['version_count']} version(s)  "
            f"registered {w['registered_at']} by {w.get('registered_by') or '-'}"
        )
    if not body["data"]:
        print("no workflows")
    return 0


def _workflows_show(args: argparse.Namespace) -> int:
    workflow_id = quote(args.workflow_id, safe="")
    if args.version is not None:
        body = _get(args, f"/v1/workflows/{workflow_id}/versions/{args.version}")
        version = body["version"]
    else:
        body = _get(args, f"/v1/workflows/{workflow_id}")
        version = body["latest_version"]
    if args.json:
        print_json(body)
        return 0
    print(
        f"workflow {body['workflow_id']} v{version}  registered {body['registered_at']} by "
        f"{body.get('registered_by') or '-'}"
    )
    print(json.dumps(body["definition"], indent=2, ensure_ascii=False))
    return 0


def _nodes_list(args: argparse.Namespace) -> int:
    body = _get(args, "/v1/nodes", {"category": args.category} if args.category else None)
    if args.json:
        print_json(body)
        return 0
    for n in body["data"]:
        production = ", ".join(n["production_versions"]) or "-"
        print(
            f"{n['name']:<28} {n['category']:<12} latest {n['latest_version']:<10} "
            f"production {production}"
        )
    if not body["data"]:
        print("no nodes")
    return 0


def _nodes_show(args: argparse.Namespace) -> int:
    body = _get(args, f"/v1/nodes/{quote(args.name, safe='')}/versions")
    if args.json:
        print_json(body)
        return 0
    print(f"node {body['name']}: {body['count']} version(s)")
    for v in body["data"]:
        print(
            f"  {v['version']:<12} {v['status']:<11} weight {v['rollout_weight']:<5g} "
            f"updated {v['updated_at']}"
        )
    return 0


def add_catalog_commands(subparsers: Any, default_api: str) -> None:
    def api_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--api", default=default_api, help=f"API base URL ({default_api})")
        add_json_flag(parser)

    workflows = subparsers.add_parser("workflows", help="registered workflows (read only)")
    actions = workflows.add_subparsers(dest="workflows_action", required=True)
    listing = actions.add_parser("list", help="every workflow, its latest version")
    api_arg(listing)
    listing.set_defaults(handler=_guard(_workflows_list))
    show = actions.add_parser("show", help="a workflow's definition (latest, or --version)")
    show.add_argument("workflow_id")
    show.add_argument("--version", type=int, help="this version (default: the latest)")
    api_arg(show)
    show.set_defaults(handler=_guard(_workflows_show))

    nodes = subparsers.add_parser("nodes", help="the node catalog (read only)")
    node_actions = nodes.add_subparsers(dest="nodes_action", required=True)
    node_list = node_actions.add_parser("list", help="catalogued nodes and their versions")
    node_list.add_argument("--category", help="only this category (e.g. http)")
    api_arg(node_list)
    node_list.set_defaults(handler=_guard(_nodes_list))
    node_show = node_actions.add_parser("show", help="every version of a node, its status")
    node_show.add_argument("name")
    api_arg(node_show)
    node_show.set_defaults(handler=_guard(_nodes_show))
