"""``code.run`` steps checked against the operator's maximums when a workflow is registered.

The worker refuses a run over a maximum anyway (runner.check_policy); this only moves the
refusal of *literal* limits to the moment the definition is sent, with the step's field path
(``steps[2].params.limits.memMb``). Templated limits (``{{ inputs.mem }}``) are known only at
dispatch and pass here. The maximums are this process's ``REFLUX_SANDBOX_MAX_*`` settings, which
a deployment gives its API and its workers alike; a worker with lower ones still refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from node_workers.sandbox.limits import SandboxConfig, setting_name
from workflows.model import WorkflowDefinition
from workflows.validation import FieldError

__all__ = ["CODE_RUN", "sandbox_limit_errors"]

CODE_RUN: Final = "code.run"


def sandbox_limit_errors(definition: WorkflowDefinition, config: SandboxConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    maximums = config.maximums()
    for i, step in enumerate(definition.steps):
        if step.node_name != CODE_RUN or not isinstance(step.params, Mapping):
            continue
        limits = step.params.get("limits")
        if not isinstance(limits, Mapping):
            continue
        for field, maximum in maximums.items():
            value = limits.get(field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # absent, a template, or a type the worker's model refuses
            if value > maximum:
                errors.append(
                    FieldError(
                        f"steps[{i}].params.limits.{field}",
                        f"Expected at most {maximum:g} (the sandbox's maximum, "
                        f"{setting_name(field)}), but got {value:g}",
                    )
                )
    return errors
