"""Workflow definitions: model, parsing/validation, expressions and graph mutations (pure).

Public surface (re-exported here; modules are small and private in spirit):

- :func:`parse_workflow` (YAML/JSON/dict -> :class:`WorkflowDefinition`), raising
  :class:`WorkflowValidationError` whose ``errors`` are :class:`FieldError` (``path``, ``message``).
- :func:`validate_inputs`, :func:`render_params`, :func:`evaluate_when`, :class:`TemplateError`.
- :class:`NodeCatalogView` / :class:`StaticNodeCatalog` for catalog-aware validation.
- :func:`apply_mutation` for ``GraphMutation`` bodies.

See docs/workflows.md for the file format.
"""

from workflows.durations import format_duration, parse_duration
from workflows.expressions import (
    ExpressionSyntaxError,
    Reference,
    TemplateError,
    compile_expression,
    evaluate,
    evaluate_when,
    expression_references,
    is_truthy,
    render_params,
    render_template,
)
from workflows.model import (
    CacheSpec,
    Defaults,
    InputSpec,
    RetrySpec,
    StepDefinition,
    WorkflowDefinition,
)
from workflows.mutations import apply_mutation
from workflows.node_catalog import NodeCatalogView, StaticNodeCatalog
from workflows.semver import (
    NodeRef,
    Version,
    VersionConstraint,
    invoke_major,
    parse_node_ref,
)
from workflows.validation import (
    FieldError,
    WorkflowValidationError,
    build_definition,
    check_definition,
    parse_workflow,
    validate_inputs,
)

__all__ = [
    "CacheSpec",
    "Defaults",
    "ExpressionSyntaxError",
    "FieldError",
    "InputSpec",
    "NodeCatalogView",
    "NodeRef",
    "Reference",
    "RetrySpec",
    "StaticNodeCatalog",
    "StepDefinition",
    "TemplateError",
    "Version",
    "VersionConstraint",
    "WorkflowDefinition",
    "WorkflowValidationError",
    "apply_mutation",
    "build_definition",
    "check_definition",
    "compile_expression",
    "evaluate",
    "evaluate_when",
    "expression_references",
    "format_duration",
    "invoke_major",
    "is_truthy",
    "parse_duration",
    "parse_node_ref",
    "parse_workflow",
    "render_params",
    "render_template",
    "validate_inputs",
]
