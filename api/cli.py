"""``reflux api``: serve the HTTP API with uvicorn.

Wire into the main parser with ``add_api_commands(subparsers)``; the handler returns an exit
code like the other ``reflux`` commands.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_api_commands", "serve"]


def add_api_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``api`` (``reflux api --host 127.0.0.1 --port 8080``) to an argparse subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "api", help="serve the HTTP API (FastAPI under /v1, uvicorn)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default info)",
    )
    parser.set_defaults(handler=serve)
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    # One worker process: the app holds one producer and one pool; scale with more processes
    # behind a load balancer, each started by this command.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0
