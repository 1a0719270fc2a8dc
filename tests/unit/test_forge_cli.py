"""``reflux forge openapi --dry-run``: the artifact, locally, with no API and no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_workers.artifacts.bundle import artifact_digest, parse_artifact
from reflux.cli import main

SPEC = Path(__file__).parent / "forge_specs" / "petstore.yaml"


def test_dry_run_json_prints_the_artifact_and_its_digest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["forge", "openapi", str(SPEC), "--operation", "getPetById", "--dry-run", "--json"]
    assert main([*argv, "--name", "pets.get", "--secret", "PETS_KEY"]) == 0
    out = json.loads(capsys.readouterr().out)
    digest = out.pop("digest")
    artifact = parse_artifact(out)
    assert artifact_digest(artifact) == digest
    assert (artifact.manifest.name, artifact.manifest.secrets) == ("pets.get", ("PETS_KEY",))


def test_dry_run_text_shows_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["forge", "openapi", str(SPEC), "--operation", "listPets", "--dry-run"]
    assert main([*argv, "--server", "http://127.0.0.1:8080/v1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("petstore.list_pets@0.1.0  sha256:")
    assert "egress 127.0.0.1:8080  secrets PETSTORE_API_KEY" in out
    assert "# ---- node.py ----" in out and "def run(input, ctx):" in out
    assert "# ---- test_node.py ----" in out


def test_errors_name_the_operations_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forge", "openapi", str(SPEC), "--operation", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "[OperationNotFound]" in err and "has adopt, createPet, deletePet" in err
    assert main(["forge", "openapi", "/nonexistent.yaml", "--operation", "x", "--dry-run"]) == 2
    assert "Expected a readable OpenAPI document at '/nonexistent.yaml'" in capsys.readouterr().err
