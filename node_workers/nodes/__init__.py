"""The built-in nodes. Add a node here and to :func:`builtin_nodes`; the registry does the rest."""

from __future__ import annotations

from node_workers.node import AnyNode
from node_workers.nodes.ai_meta import AiMetaNode
from node_workers.nodes.code_run import CodeRunNode
from node_workers.nodes.condition import ConditionNode
from node_workers.nodes.database_query import DatabaseQueryNode
from node_workers.nodes.email_send import EmailSendNode
from node_workers.nodes.http_request import HttpRequestNode
from node_workers.nodes.openai_chat import OpenAIChatNode
from node_workers.nodes.transform import TransformNode
from node_workers.nodes.webhook_trigger import WebhookTriggerNode

__all__ = [
    "AiMetaNode",
    "CodeRunNode",
    "ConditionNode",
    "DatabaseQueryNode",
    "EmailSendNode",
    "HttpRequestNode",
    "OpenAIChatNode",
    "TransformNode",
    "WebhookTriggerNode",
    "builtin_nodes",
]


def builtin_nodes() -> list[AnyNode]:
    """Fresh instances of every built-in node version (each owns its own client pools)."""
    return [
        HttpRequestNode(),
        TransformNode(),
        ConditionNode(),
        DatabaseQueryNode(),
        EmailSendNode(),
        OpenAIChatNode(),
        CodeRunNode(),
        WebhookTriggerNode(),
        AiMetaNode(),
    ]
