"""What the code.run sandbox image is made of, and its tag (pure: reads two files, no I/O else).

The docker backend runs every program in ``reflux-sandbox:<hash>``, built by ``make up``
(:mod:`infra.services.docker`) from a debootstrap root file system: nothing is pulled from a
registry. ``<hash>`` covers ``docker_image/Dockerfile`` and ``docker_image/packages.txt``, so the
tag names the content and a change to either builds a new image. The worker's default image
(:class:`node_workers.sandbox.SandboxConfig`) is this tag.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Final

__all__ = [
    "BASE_REPOSITORY",
    "DOCKERFILE",
    "IMAGE_DIR",
    "PACKAGES_FILE",
    "REPOSITORY",
    "SUITE",
    "VARIANT",
    "packages",
    "rootfs_digest",
    "sandbox_image_tag",
]

IMAGE_DIR: Final = Path(__file__).resolve().parent / "docker_image"
DOCKERFILE: Final = IMAGE_DIR / "Dockerfile"
PACKAGES_FILE: Final = IMAGE_DIR / "packages.txt"
SUITE: Final = "bookworm"
VARIANT: Final = "minbase"
REPOSITORY: Final = "reflux-sandbox"
BASE_REPOSITORY: Final = "reflux-sandbox-base"


def packages() -> list[str]:
    """The Debian packages ``debootstrap --include`` adds to minbase."""
    names: list[str] = []
    for line in PACKAGES_FILE.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(len(part).to_bytes(8, "big"))
        sha.update(part)
    return sha.hexdigest()[:12]


def rootfs_digest() -> str:
    """Names the debootstrap root file system (suite, variant, packages) and its base image."""
    return _digest(SUITE.encode(), VARIANT.encode(), "\n".join(packages()).encode())


@functools.cache
def sandbox_image_tag() -> str:
    """``reflux-sandbox:<hash of the Dockerfile and the package list>``."""
    digest = _digest(
        SUITE.encode(), VARIANT.encode(), DOCKERFILE.read_bytes(), PACKAGES_FILE.read_bytes()
    )
    return f"{REPOSITORY}:{digest}"
