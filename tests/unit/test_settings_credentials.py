"""No secret is written in code: settings defaults hold none, and the local services'
credentials come from the files `make up` generates (or the environment)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from foundation.settings import PROJECT_ROOT, Settings

SECRET_WORDS = ("secret", "password", "passwd", "token", "access_key", "credential")


def test_no_default_secret_in_settings() -> None:
    for name, field in Settings.model_fields.items():
        if any(word in name for word in SECRET_WORDS):
            assert field.default in ("", None), f"Settings.{name} has a default secret"
    # And no literal anywhere in the module that looks like one (the old S3 key included).
    source = (PROJECT_ROOT / "foundation" / "settings.py").read_text()
    assert "reflux-secret-key" not in source
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and any(word in node.target.id for word in SECRET_WORDS)
            and node.value is not None
        ):
            assert isinstance(node.value, ast.Constant) and node.value.value in ("", None)


def test_the_default_dsn_has_no_password_but_a_passfile(tmp_path: Path) -> None:
    dsn = Settings(data_dir=tmp_path).postgres_dsn
    assert dsn.startswith("postgresql://reflux@127.0.0.1:15432/reflux?passfile=")
    assert dsn.endswith(f"{tmp_path}/credentials/postgres.pgpass")
    # Given explicitly: used as it is.
    assert Settings(postgres_dsn="postgresql://a@b/c").postgres_dsn == "postgresql://a@b/c"


def test_s3_credentials_come_from_the_generated_file_or_the_environment(
    tmp_path: Path,
) -> None:
    assert Settings(data_dir=tmp_path).s3_secret_key == ""
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "s3.json").write_text(
        json.dumps({"access_key": "gen-access", "secret_key": "gen-secret"})
    )
    settings = Settings(data_dir=tmp_path)
    assert (settings.s3_access_key, settings.s3_secret_key) == ("gen-access", "gen-secret")
    explicit = Settings(data_dir=tmp_path, s3_access_key="env-a", s3_secret_key="env-s")
    assert (explicit.s3_access_key, explicit.s3_secret_key) == ("env-a", "env-s")
