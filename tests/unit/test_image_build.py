"""The image build's static parts: what it copies for the wheel matches pyproject.toml, and the
Dockerfile's runtime stage runs `reflux` as a numeric non-root user."""

from __future__ import annotations

import tomllib

from foundation.settings import PROJECT_ROOT
from infra.image import build


def test_the_source_copy_holds_every_package_pyproject_includes() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(build._PACKAGES)
    assert pyproject["project"]["readme"] in build._SOURCE_FILES


def test_the_runtime_stage_is_non_root_with_the_cli_as_entrypoint() -> None:
    lines = build.DOCKERFILE.read_text().splitlines()
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert 'ENTRYPOINT ["reflux"]' in runtime
    (user,) = [line.split()[1] for line in runtime if line.startswith("USER ")]
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    # The build stage's wheels stay there: only the venv is copied over, and the web console's
    # build from the context.
    assert [line for line in runtime if line.startswith("COPY ")] == [
        "COPY --from=build /opt/reflux /opt/reflux",
        "COPY console/ /opt/reflux/console/",
    ]
