"""An encrypted secret file end to end: `reflux secrets encrypt` leaves no plaintext in the
secrets folder, and the engine's workers (real Kafka, Postgres, Redis) decrypt it for a step
that sends it to an HTTP service; without the key the step fails with a configuration error."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from foundation.settings import Settings
from node_workers.secrets.encryption import LocalKeyManager, generate_key, write_encrypted_secret
from tests.integration.engine_fixtures import HarnessFactory
from tests.integration.http_fixtures import HttpTestServer

VALUE = "enc-9c1d4e7f2a6b-token a+b/c"


def _workflow(base: str) -> dict[str, Any]:
    return {
        "id": "secret-encrypted",
        "steps": [
            {
                "id": "call",
                "node": "http.request@^1",
                "params": {
                    "url": f"{base}/echo",
                    "method": "POST",
                    "headers": {"Authorization": "Bearer {{ secrets.ENC_TOKEN }}"},
                },
            }
        ],
    }


@pytest.mark.parametrize("with_key", [True, False])
def test_workers_decrypt_encrypted_secret_files(
    tmp_path: Path,
    kafka_settings: Settings,
    engine_harness: HarnessFactory,
    http: HttpTestServer,
    with_key: bool,
) -> None:
    key = generate_key()
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "grants.yaml").write_text(
        "ENC_TOKEN: {hosts: [127.0.0.1], grants: [{workflow: secret-encrypted, versions: [1]}]}\n"
    )
    write_encrypted_secret(secrets_dir, "ENC_TOKEN", VALUE, LocalKeyManager(base64.b64decode(key)))
    for path in secrets_dir.iterdir():  # nothing on disk holds the value
        assert VALUE.encode() not in path.read_bytes()
        assert base64.b64encode(VALUE.encode()) not in path.read_bytes()

    update: dict[str, Any] = {"secrets_dir": secrets_dir}
    if with_key:
        update["secrets_key"] = SecretStr(key)
    harness = engine_harness(kafka_settings.model_copy(update=update), client_id="secret-enc")
    harness.register(_workflow(http.url))
    run = harness.wait(harness.start("secret-encrypted"), timeout=60)
    echoed = http.requests_to("/echo")
    if with_key:
        assert run.status == "succeeded", run
        assert [r.header("authorization") for r in echoed] == [f"Bearer {VALUE}"]
    else:
        assert run.status == "failed", run
        assert echoed == []
        step = harness.steps(run.run_id)["call"]
        assert step.error is not None, step
        assert step.error["error_class"] == "Configuration", step
        assert "REFLUX_SECRETS_KEY" in step.error["message"], step
