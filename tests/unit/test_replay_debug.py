"""Run diff, run bundles and the ``reflux replay`` / ``reflux runs diff`` output, over the
golden run logs (tests/fixtures/runs/); the end-to-end side is
tests/integration/test_replay_debug.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.replay.bundle import (
    Bundle,
    BundleError,
    BundlePayload,
    BundleWorkflow,
    child_run_ids,
    payload_refs,
    read_bundle,
    workflows_used,
    write_bundle,
)
from processors.replay.diff import diff_runs, json_changes
from processors.replay.explain import event_from_json
from processors.scheduler.evolve import fold
from reflux.replay_cli import diff_table, main_replay
from schemas.models import PayloadRef, StepSucceeded
from schemas.run_log import RunEvent

RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs"


def _load(name: str) -> list[RunEvent]:
    lines = (RUNS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [event_from_json(r["type"], r["event"]) for r in map(json.loads, lines) if r]


def _field(diff: dict[str, object], path: str) -> dict[str, object]:
    fields = diff["fields"]
    assert isinstance(fields, list)
    return next(f for f in fields if f["path"] == path)


# -- diff -----------------------------------------------------------------------------------------


def test_a_run_is_equal_to_itself() -> None:
    diff = diff_runs(_load("linear"), _load("linear"))
    assert diff.equal and diff.different == []
    assert all(f.equal for f in diff.fields)


def test_a_changed_output_is_flagged_with_its_leaf_paths() -> None:
    a = _load("condition_skip")
    b = [
        e.model_copy(update={"output": {"params": {"amount": 43}, "step": "check"}})
        if isinstance(e, StepSucceeded) and e.step.step_id == "check"
        else e
        for e in a
    ]
    diff = diff_runs(a, b).to_json()
    assert diff["equal"] is False and diff["different"] == 1
    output = _field(diff, "steps.check.output")
    assert output["equal"] is False
    assert output["changes"] == [{"path": "params.amount", "a": 42, "b": 43}]
    assert _field(diff, "steps.check.status")["equal"] is True
    assert _field(diff, "steps.auto.output")["equal"] is True


def test_retry_against_exhausted_differs_in_status_attempts_and_steps_only_one_ran() -> None:
    diff = diff_runs(_load("retry_then_success"), _load("retries_exhausted")).to_json()
    status = _field(diff, "run.status")
    assert (status["a"], status["b"], status["equal"]) == ("succeeded", "failed", False)
    assert _field(diff, "steps.flaky.error")["equal"] is False
    assert _field(diff, "steps.after.status")["b"] == "pending"
    # Timings are shown, flagged, and never make runs different.
    assert _field(diff, "steps.flaky.duration_ms")["kind"] == "timing"


def test_graph_mutations_are_compared_with_who_and_why() -> None:
    diff = diff_runs(_load("graph_mutation"), _load("linear")).to_json()
    mutations = _field(diff, "graph.mutations")
    assert mutations["equal"] is False
    assert isinstance(mutations["a"], list) and mutations["a"][0]["requested_by"] == "alice"
    assert _field(diff, "graph.workflow_id")["equal"] is False


def test_claim_checked_outputs_are_loaded_only_when_digests_differ() -> None:
    a = _load("linear")
    ref_1 = PayloadRef(uri="s3://b/1", size_bytes=2, sha256="1" * 64, content_type="json")
    ref_2 = PayloadRef(uri="s3://b/2", size_bytes=2, sha256="2" * 64, content_type="json")

    def with_ref(ref: PayloadRef) -> list[RunEvent]:
        return [
            e.model_copy(update={"output": None, "output_ref": ref})
            if isinstance(e, StepSucceeded) and e.step.step_id == "fetch"
            else e
            for e in a
        ]

    loaded: list[str] = []

    def load(ref: PayloadRef) -> object:
        loaded.append(ref.uri)
        return {"from": ref.uri}

    same = diff_runs(with_ref(ref_1), with_ref(ref_1), load_payload=load)
    assert same.equal and loaded == []
    other = diff_runs(with_ref(ref_1), with_ref(ref_2), load_payload=load).to_json()
    assert sorted(loaded) == ["s3://b/1", "s3://b/2"]
    assert _field(other, "steps.fetch.output")["changes"] == [
        {"path": "from", "a": "s3://b/1", "b": "s3://b/2"}
    ]


def test_json_changes_cover_missing_keys_and_list_items() -> None:
    assert json_changes({"a": 1, "l": [1, 2]}, {"l": [1, 3, 4]}) == [
        {"path": "a", "a": 1, "b": {"$missing": True}},
        {"path": "l[1]", "a": 2, "b": 3},
        {"path": "l[2]", "a": {"$missing": True}, "b": 4},
    ]
    assert json_changes(1, 1.0) == [{"path": "", "a": 1, "b": 1.0}]


def test_diff_table_marks_changed_cells_and_colours_only_when_asked() -> None:
    a = _load("retry_then_success")
    diff = diff_runs(a, _load("retries_exhausted")).to_json()
    plain = diff_table(diff)
    assert "≠ steps.flaky.status" in plain
    assert "\x1b[" not in plain
    assert "  steps.flaky.node_version" in plain  # equal rows are shown, unmarked
    assert plain.rstrip().endswith(f"{diff['different']} of {diff['compared']} fields differ")
    coloured = diff_table(diff, colour=True)
    assert "\x1b[31m" in coloured and "\x1b[32m" in coloured
    changed = diff_table(diff, only_changed=True)
    assert "steps.flaky.node_version" not in changed
    assert "(timings aside)" in diff_table(diff_runs(a, a).to_json())


# -- bundles --------------------------------------------------------------------------------------


def _bundle() -> Bundle:
    data = json.dumps({"big": "x" * 100}).encode()
    payload = BundlePayload(
        "s3://reflux/p/1", hashlib.sha256(data).hexdigest(), len(data), "application/json", data
    )
    return Bundle(
        run_id="run-1",
        events={"run-1": _load("condition_skip")},
        workflows=[BundleWorkflow("condition-skip", 1, {"id": "condition-skip", "steps": []})],
        payloads=[payload],
        exported_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_bundle_round_trip_keeps_every_event_and_payload() -> None:
    original = _bundle()
    data = write_bundle(original)
    assert data == write_bundle(original)  # deterministic
    back = read_bundle(data)
    assert back.run_id == "run-1" and back.runs == ["run-1"]
    assert list(back.events["run-1"]) == list(original.events["run-1"])
    assert fold(back.events["run-1"]) == fold(original.events["run-1"])
    assert back.payloads == list(original.payloads)
    assert back.workflows == list(original.workflows)
    assert back.manifest["counts"] == {"events": 10, "workflows": 1, "payloads": 1}
    first = json.loads(gzip.decompress(data).splitlines()[1])
    assert first["kind"] == "workflow"
    event = json.loads(gzip.decompress(data).splitlines()[2])
    assert (event["type"], event["schema_version"]) == ("reflux.events.RunStarted", 4)


def test_a_damaged_bundle_is_refused_naming_what_is_wrong() -> None:
    lines = gzip.decompress(write_bundle(_bundle())).splitlines(keepends=True)
    edited = lines[0] + lines[1].replace(b"condition-skip", b"condition-skiq") + b"".join(lines[2:])
    with pytest.raises(BundleError, match=r"manifest\.sha256"):
        read_bundle(gzip.compress(edited))
    with pytest.raises(BundleError, match="gzip"):
        read_bundle(b"not a bundle")
    manifest = json.loads(lines[0])
    manifest["format_version"] = 99
    with pytest.raises(BundleError, match=r"manifest\.format_version"):
        read_bundle(gzip.compress(json.dumps(manifest).encode() + b"\n" + b"".join(lines[1:])))


def test_a_bundle_with_a_gap_in_a_log_is_refused() -> None:
    bundle = _bundle()
    events = list(bundle.events["run-1"])
    del events[3]
    gap = Bundle(run_id="run-1", events={"run-1": events})
    with pytest.raises(BundleError, match=r"runs\.run-1: the log does not fold"):
        read_bundle(write_bundle(gap))


def test_what_a_log_refers_to() -> None:
    assert workflows_used(_load("condition_skip")) == {("condition-skip", 1)}
    children = _load("map_children")
    assert len(child_run_ids(children)) == 6
    assert workflows_used(children) == {("map_over_workflow", 1), ("item_child", 1)}
    assert payload_refs(_load("linear")) == []


# -- reflux replay over a bundle file -------------------------------------------------------------


def test_replay_until_prints_the_state_there(tmp_path: Path) -> None:
    path = tmp_path / "run.reflux"
    path.write_bytes(write_bundle(_bundle()))
    out = io.StringIO()
    assert main_replay([str(path), "--until", "4"], "http://unused", out=out) == 0
    text = out.getvalue()
    assert "#4    StepSkipped" in text
    assert "why: condition `steps.check.output.params.amount > `100`` -> false" in text
    assert "#5" not in text
    assert "== state after seq 4 ==" in text
    assert "approve          skipped" in text


def test_replay_json_has_each_explanation_and_the_state(tmp_path: Path) -> None:
    path = tmp_path / "run.reflux"
    path.write_bytes(write_bundle(_bundle()))
    out = io.StringIO()
    assert main_replay([str(path), "--until", "4", "--json"], "http://unused", out=out) == 0
    body = json.loads(out.getvalue())
    assert [e["seq"] for e in body["events"]][-1] == 4
    skipped = body["events"][-1]
    assert skipped["event_type"] == "StepSkipped"
    assert any("-> false" in line for line in skipped["explanation"])
    assert body["state"]["last_seq"] == 4 and body["state"]["steps"]["approve"]["status"] == (
        "skipped"
    )


def test_step_reads_one_line_per_event_when_stdin_is_not_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "run.reflux"
    path.write_bytes(write_bundle(_bundle()))
    out = io.StringIO()
    assert main_replay([str(path), "--step"], "x", out=out, stdin=io.StringIO("\n\nq\n")) == 0
    assert "#2" in out.getvalue() and "#3" not in out.getvalue()
    assert "== state after seq 2 ==" in out.getvalue()
    out = io.StringIO()
    # End of input: the replay runs on to the end without waiting.
    assert main_replay([str(path), "--step"], "x", out=out, stdin=io.StringIO("\n")) == 0
    assert "== state after seq 9 ==" in out.getvalue()


def test_until_beyond_the_log_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.reflux"
    path.write_bytes(write_bundle(_bundle()))
    assert main_replay([str(path), "--until", "99"], "x", out=io.StringIO()) == 2
    assert "--until: Expected a seq <= 9" in capsys.readouterr().err


def test_replay_ab_is_handed_to_the_ab_cli(capsys: pytest.CaptureFixture[str]) -> None:
    # `reflux replay ab ...` is the A/B replay's own parser, not the debugging re-fold.
    with pytest.raises(SystemExit) as exit_info:
        main_replay(["ab", "--help"], "x")
    assert exit_info.value.code == 0
    assert "reflux replay ab" in capsys.readouterr().out
