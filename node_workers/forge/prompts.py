"""What the forge says to the model and how it reads the answer (pure: no I/O).

The system prompt states the artifact contract in the words of
:mod:`node_workers.artifacts.bundle`'s docstring -- taken from it, not copied, so the prompt
cannot drift from what the sandbox actually provides -- plus the manifest's fields and the one
answer shape the forge accepts. Every later message is feedback: why the previous answer could
not be used (the field path of a contract violation, or the failing tests' names and
messages), so the next round can fix exactly that.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from foundation.errors import NonRetryableError
from node_workers.artifacts import bundle
from node_workers.artifacts.bundle import ArtifactError, NodeArtifact, parse_artifact

__all__ = [
    "ANSWER_SHAPE",
    "ENTRY",
    "TESTS",
    "AnswerError",
    "FailedTest",
    "Prompt",
    "build_prompt",
    "contract_text",
    "failure_feedback",
    "parse_answer",
    "rejection_feedback",
]

ENTRY: Final = "node.py"
TESTS: Final = "test_node.py"
ANSWER_SHAPE: Final = '{"manifest": {...}, "files": {"node.py": "...", "test_node.py": "..."}}'
_MAX_EXAMPLE_CHARS: Final = 4_000
"""One example as JSON in the prompt is cut to this many characters."""
_MAX_MESSAGE_CHARS: Final = 1_500
"""One failing test's message in the feedback is cut to this many characters."""
_FENCE: Final = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL)
_TEST_FUNCTION: Final = re.compile(r"^def test_\w*\(\s*\)", re.MULTILINE)


class AnswerError(ArtifactError, NonRetryableError):
    """An answer the forge cannot use; the message names the field path (``files.node.py``,
    ``manifest.egress[0]``), which goes back to the model as feedback."""

    error_class = "ForgeAnswerInvalid"


@dataclass(frozen=True, slots=True)
class Prompt:
    """The first two messages of a conversation with the model."""

    system: str
    user: str

    @property
    def sha256(self) -> str:
        """``sha256:<hex>`` of the two texts (canonical JSON): provenance names the prompt."""
        text = json.dumps({"system": self.system, "user": self.user}, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


@dataclass(frozen=True, slots=True)
class FailedTest:
    """A test that failed in the sandbox, as the feedback shows it."""

    name: str
    message: str


def contract_text() -> str:
    """The in-sandbox code contract, from ``bundle.py``'s docstring (from "The code contract"
    to its end): the one description of it, here and for people."""
    doc = bundle.__doc__ or ""
    start = doc.find("The code contract")
    if start < 0:  # a refactored docstring must not silently empty the prompt
        raise RuntimeError("node_workers.artifacts.bundle's docstring lost 'The code contract'")
    return doc[start:].strip()


_MANIFEST_FIELDS: Final = """\
The manifest (JSON object; no other keys):
- "name": dotted lowercase node name with at least two segments, e.g. "acme.quote".
- "version": semver, e.g. "1.0.0".
- "description": one or two sentences (1..2000 characters).
- "input_schema": JSON Schema (2020-12) of the input, "type": "object", with "properties" and
  "required"; the worker validates every input against it.
- "output_schema": JSON Schema (2020-12) of what run() returns; the worker validates it.
- "side_effects": true if the node changes anything outside itself (sends, writes, pays).
- "idempotent": true if calling it twice with the same input is harmless.
- "egress": list of the hosts the code calls ("api.example.com", "api.example.com:443",
  "*.example.com"); [] when it needs no network. Only hosts the operator allows are accepted,
  and any other host is refused at run time.
- "secrets": names of the secrets it reads with ctx.secret ("ACME_TOKEN"); [] when none.
- "limits": {"cpu": <=2 cores, "memory_mb": 32..2048, "timeout_s": <=300}; omit for the
  defaults (0.5, 256, 10)."""

_RULES: Final = """\
Rules:
- Python 3, standard library only (no pip packages): use ctx.http for every HTTP call, never
  urllib, socket, requests or subprocess.
- test_node.py must test node.run through reflux_node.testing.fake_context with canned
  responses for every URL the code calls; the tests run with no network at all, so a test that
  reaches a real host fails.
- Cover the normal case and at least one failure (an HTTP error status or an input the node
  refuses, raising NodeFailure).
- Keep to what the description asks; do not invent hosts, secrets or fields it does not need."""


def build_prompt(description: str, examples: Sequence[Mapping[str, Any]] = ()) -> Prompt:
    """The system message (contract, manifest, answer shape, rules) and the user message (the
    description and the examples, each an ``{"input": ..., "output": ...}``-like object)."""
    system = "\n\n".join(
        [
            "You write REFLUX nodes: small Python functions that run in a sandbox. Answer with "
            "one node artifact: its manifest, its code and its tests.",
            contract_text(),
            _MANIFEST_FIELDS,
            _RULES,
            "Answer with exactly one JSON object and nothing else, optionally inside a "
            f"```json fence:\n{ANSWER_SHAPE}\n"
            'The values of "files" are the complete texts of node.py and test_node.py.',
        ]
    )
    user = f"Write a node that does this:\n{description.strip()}"
    if examples:
        shown = [_cut(json.dumps(e, ensure_ascii=False, sort_keys=True)) for e in examples]
        user += "\n\nExamples (input and expected output; make them tests):\n" + "\n".join(
            f"{i}. {text}" for i, text in enumerate(shown, start=1)
        )
    return Prompt(system=system, user=user)


def _cut(text: str, limit: int = _MAX_EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def _json_text(answer: str) -> str:
    """The JSON object's text: the first fenced block if there is one, else the whole answer."""
    fenced = _FENCE.search(answer)
    return (fenced.group(1) if fenced else answer).strip()


def parse_answer(
    answer: str,
    *,
    provenance: Mapping[str, Any] | None = None,
    manifest_overrides: Mapping[str, Any] | None = None,
) -> NodeArtifact:
    """The artifact in the model's answer; :class:`AnswerError` naming the field path when the
    answer is not the one JSON object asked for or breaks the contract (:func:`parse_artifact`'s
    checks, plus: both files present, at least one ``test_*`` function). ``manifest_overrides``
    (the caller's name or version) replace the model's values before the checks."""
    text = _json_text(answer)
    if not text:
        raise AnswerError("answer: Expected one JSON object, but the answer is empty")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AnswerError(f"answer: Expected one JSON object, but it is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise AnswerError(f"answer: Expected a JSON object, but got {type(value).__name__}")
    extra = sorted(set(value) - {"manifest", "files"})
    if extra:
        raise AnswerError(f"answer.{extra[0]}: Expected only 'manifest' and 'files'")
    for key in ("manifest", "files"):
        if not isinstance(value.get(key), dict):
            raise AnswerError(f"{key}: Expected a JSON object")
    files = value["files"]
    for name in (ENTRY, TESTS):
        if not isinstance(files.get(name), str) or not files[name].strip():
            raise AnswerError(f"files.{name}: Expected the text of {name}")
    if not _TEST_FUNCTION.search(files[TESTS]):
        raise AnswerError(f"files.{TESTS}: Expected at least one 'def test_...():' function")
    return parse_artifact(
        {
            "manifest": {**value["manifest"], **(manifest_overrides or {})},
            "files": files,
            "entry": ENTRY,
            "tests": TESTS,
            "provenance": dict(provenance or {}),
        }
    )


def rejection_feedback(reason: str) -> str:
    """The next user message after an answer the forge could not use (parse error, contract
    violation, limits or egress refused)."""
    return (
        f"Your answer could not be used: {reason}\n"
        f"Fix that and answer again with the whole artifact as one JSON object: {ANSWER_SHAPE}"
    )


def failure_feedback(failed: Sequence[FailedTest], *, policy: str | None = None) -> str:
    """The next user message after tests failed in the sandbox: each failing test's name and
    message, so the model fixes the code (or a wrong test)."""
    lines = [f"{len(failed)} test(s) failed in the sandbox (no network, only /work writable):"]
    lines += [f"- {t.name}: {_cut(t.message.strip(), _MAX_MESSAGE_CHARS)}" for t in failed]
    if policy:
        lines.append(f"Sandbox policy: {policy}")
    lines.append(
        "Fix node.py (or a test that expects the wrong thing) and answer again with the whole "
        f"artifact as one JSON object: {ANSWER_SHAPE}"
    )
    return "\n".join(lines)
