"""Builds the reflux container image ``reflux:local`` (``make image``; ADR 0061, docs/image.md).

Nothing is pulled from a registry and the build itself has no network:

1. the base is the Debian bookworm root file system that ``make up`` imports for the code.run
   sandbox (``reflux-sandbox-base:<hash>``, :mod:`infra.services.docker`; python3.11 is in it),
   imported now if the project's dockerd lacks it;
2. ``pip wheel -c constraints.txt`` writes the wheel of this checkout and of every locked
   dependency into a fresh build context (pip's cache makes a rebuild quick);
3. ``docker build --network none`` of ``infra/image/Dockerfile`` (multi-stage: a venv made from
   those wheels only, copied into a runtime stage that runs as the non-root user ``reflux``).

The image is tagged ``reflux:local`` and ``reflux/reflux:latest`` (the name infra/k8s/*.yaml
use). Usage: ``python -m infra.image.build [--tag NAME:TAG]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from foundation.settings import PROJECT_ROOT, Settings, get_settings
from infra.services.base import ServiceError, find_command, log
from infra.services.docker import Docker

__all__ = ["DOCKERFILE", "IMAGE_LABEL", "K8S_IMAGE", "LOCAL_TAG", "build_image", "main"]

DOCKERFILE: Final = Path(__file__).resolve().parent / "Dockerfile"
LOCAL_TAG: Final = "reflux:local"
K8S_IMAGE: Final = "reflux/reflux:latest"
"""The image infra/k8s/*.yaml name; the local build carries this tag too."""
# What pyproject.toml's [tool.setuptools.packages.find] includes, and the files it reads.
_PACKAGES: Final = (
    "reflux",
    "foundation",
    "workflows",
    "streams",
    "processors",
    "schemas",
    "node_workers",
    "projections",
    "api",
    "infra",
)
_SOURCE_FILES: Final = ("pyproject.toml", "README.md")
IMAGE_LABEL: Final = "io.reflux.image=reflux"
"""Both stages carry it: ``docker image prune`` (dangling images only) removes just ours."""


def docker_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``docker`` CLI call aimed at the project's own dockerd."""
    return {**os.environ, "DOCKER_HOST": settings.resolved_docker_host()}


def _source_copy(target: Path) -> Path:
    """The files the wheel is made of, copied: setuptools writes ``build/`` and ``*.egg-info``
    into the source tree, and a ``build/`` in the checkout would break ``mypy .`` (make lint)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in _SOURCE_FILES:
        shutil.copy2(PROJECT_ROOT / name, target / name)
    for name in _PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / name,
            target / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return target


def _wheels(context: Path) -> Path:
    wheels = context / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # no stale reflux wheel or dropped dependency
    wheels.mkdir(parents=True)
    source = _source_copy(context.parent / "source")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--wheel-dir",
                str(wheels),
                "--constraint",
                str(PROJECT_ROOT / "constraints.txt"),
                str(source),
            ],
            check=True,
        )
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return wheels


def _console(context: Path) -> Path:
    """The web console's production build (``make web``) into the context; the image serves
    it under /ui (``REFLUX_API_CONSOLE_DIR``, docs/console.md)."""
    built = PROJECT_ROOT / "web" / "dist"
    if not (built / "index.html").is_file():
        raise ServiceError(f"the web console is not built in {built}: `make web` builds it")
    target = context / "console"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(built, target)
    return target


def build_image(settings: Settings, tags: tuple[str, ...] = (LOCAL_TAG, K8S_IMAGE)) -> float:
    """Builds the image under ``tags``; returns the seconds it took."""
    docker = find_command("docker")
    if docker is None:
        raise ServiceError("the docker CLI is not installed (Debian package docker.io)")
    began = time.monotonic()
    base = Docker(settings).ensure_base_image()
    context = settings.data_dir / "image" / "context"
    context.mkdir(parents=True, exist_ok=True)
    log(f"image: wheels of reflux and its locked dependencies into {context / 'wheels'}")
    wheels = _wheels(context)
    _console(context)
    size_mb = sum(p.stat().st_size for p in wheels.iterdir()) / 1e6
    log(f"image: {len(list(wheels.iterdir()))} wheels ({size_mb:.0f} MB); docker build on {base}")
    argv = [docker, "build", "--network", "none", "--build-arg", f"BASE={base}"]
    for tag in tags:
        argv += ["--tag", tag]
    argv += ["--file", str(DOCKERFILE), str(context)]
    subprocess.run(argv, check=True, env=docker_env(settings))
    # The build stage's image and the image the tags named before are left untagged (about
    # 4 GB a build); only ours carry the label. Their layers would be the next build's cache,
    # but a changed wheel invalidates it anyway.
    subprocess.run(
        [docker, "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}"],
        check=True,
        env=docker_env(settings),
        stdout=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - began
    log(f"image: {', '.join(tags)} built in {seconds:.1f}s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.image.build", description=__doc__)
    parser.add_argument(
        "--tag",
        action="append",
        help=f"image tag (repeatable; default {LOCAL_TAG} and {K8S_IMAGE})",
    )
    args = parser.parse_args(argv)
    tags = tuple(args.tag) if args.tag else (LOCAL_TAG, K8S_IMAGE)
    try:
        build_image(get_settings(), tags)
    except (ServiceError, subprocess.CalledProcessError) as exc:
        print(f"image build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
