"""The project's own Docker engine (Debian's ``docker.io``) and code.run's sandbox image.

``dockerd`` runs as root with everything under ``var/``: data root ``var/docker/data``, exec root
``var/run/docker`` (its managed containerd included), pid file ``var/run/dockerd.pid``, and its own
socket ``var/run/docker.sock`` (``Settings.resolved_docker_host()``; clients set
``DOCKER_HOST=unix://…/var/run/docker.sock``). It never touches ``/var/run/docker.sock``,
``/var/lib/docker`` or ``/etc/docker/daemon.json`` (an empty config file of its own is passed), so a
system engine on the same machine is left alone. No bridge, no iptables rules: sandboxes run
with ``network_mode`` none (or host, when network is allowed and requested).

Nothing can be pulled from a registry, so the sandbox image is built here, by ``up``, when the
engine lacks it (:mod:`node_workers.sandbox.image` names it):

1. ``debootstrap --variant=minbase bookworm`` with ``docker_image/packages.txt`` into a
   temporary folder, trimmed (apt caches and lists, docs) and packed into
   ``var/docker/rootfs-<hash>.tar``: a cache, reused as long as the package list is unchanged;
2. ``docker import`` of that tarball as ``reflux-sandbox-base:<hash>``;
3. ``docker build`` of ``docker_image/Dockerfile`` on top of it (the sandbox user, ``/work``),
   tagged ``reflux-sandbox:<hash of Dockerfile and packages.txt>``.

A cold build takes a minute or two (debootstrap downloads about 45 MB); every step prints its
progress and duration, and debootstrap's full output goes to ``var/log/sandbox-image.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

from infra.services.base import (
    Service,
    ServiceError,
    ensure_debian_packages,
    find_command,
    log,
    tail_of,
)
from node_workers.sandbox.image import (
    BASE_REPOSITORY,
    IMAGE_DIR,
    SUITE,
    VARIANT,
    packages,
    rootfs_digest,
    sandbox_image_tag,
)

__all__ = ["Docker", "docker_api"]

# A unix socket path holds at most 107 bytes; containerd's lives deepest in the exec root.
_SOCKET_PATH_MAX: Final = 107
_CONTAINERD_SOCKET: Final = "/containerd/containerd.sock.ttrpc"
# What debootstrap prints per stage (the per-package lines go to the log only).
_DEBOOTSTRAP_STAGES: Final = (
    "Checking Release signature",
    "Resolving dependencies",
    "Checking component",
    "Found additional",
    "Installing core packages",
    "Unpacking the base system",
    "Configuring the base system",
    "Base system installed",
)
# Removed from the root file system before it is packed: nothing in the sandbox needs them.
_TRIM: Final = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
)


def docker_api(base_url: str, timeout: float = 2.0) -> Any:
    """A ``docker.DockerClient`` for ``base_url`` (the server's API version is negotiated, so
    this raises ``docker.errors.DockerException`` when the engine does not answer)."""
    import docker

    return docker.DockerClient(base_url=base_url, timeout=timeout)


def _unix_path(address: str) -> Path:
    if not address.startswith("unix://"):
        raise ServiceError(
            f"make up starts a local dockerd on a unix socket, but REFLUX_DOCKER_HOST is "
            f"{address!r}; unset it (the project's engine) or start that engine yourself."
        )
    return Path(address.removeprefix("unix://"))


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc and /sys in its target)."""
    prefix = str(path.resolve())
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """``rm -rf`` that first unmounts what a killed debootstrap left mounted inside."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise ServiceError(f"{path} still has mounts ({_mounts_under(path)}); not removing it")
    shutil.rmtree(path, ignore_errors=True)


class Docker(Service):
    name = "docker"
    debian_packages: ClassVar[dict[str, str]] = {
        "dockerd": "docker.io",
        "debootstrap": "debootstrap",
    }
    background: ClassVar[bool] = True  # debootstrap + image build: ~100 s on a fresh machine

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_log = self.settings.data_dir / "log" / "sandbox-image.log"

    # -- where things are ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.settings.resolved_docker_host()

    @property
    def socket(self) -> Path:
        return _unix_path(self.endpoint)

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        preferred = self.settings.data_dir / "run" / "docker"
        if len(str(preferred)) + len(_CONTAINERD_SOCKET) <= _SOCKET_PATH_MAX:
            return preferred
        # A deep checkout: containerd's socket would not fit. Same idea as postgres' fallback.
        digest = hashlib.sha256(str(self.settings.data_dir.resolve()).encode()).hexdigest()[:10]
        return Path(f"/run/reflux-{digest}/docker")

    @property
    def daemon_pid_file(self) -> Path:
        """dockerd's own pid file; ``pid_file`` (the process we spawned) is the service's."""
        return self.settings.data_dir / "run" / "dockerd.pid"

    @property
    def config_file(self) -> Path:
        return self.root / "daemon.json"

    def rootfs_tarball(self) -> Path:
        return self.root / f"rootfs-{SUITE}-{VARIANT}-{rootfs_digest()}.tar"

    # -- the service ---------------------------------------------------------------------
    def install(self) -> None:
        if os.geteuid() != 0:
            raise ServiceError(
                "The docker service runs dockerd, which needs root: run `make up` as root "
                "(code.run's docker backend and its tests need this engine)."
            )
        ensure_debian_packages(self.debian_packages)

    def port_in_use(self) -> bool:
        # Our pid file names no live dockerd, yet something answers on our socket.
        return self.is_ready()

    def start_timeout(self) -> float:
        return 60.0

    def launch(self) -> None:
        socket = self.socket
        if len(str(socket)) > _SOCKET_PATH_MAX:
            raise ServiceError(
                f"{socket} is longer than a unix socket path may be ({_SOCKET_PATH_MAX} bytes); "
                "set REFLUX_DATA_DIR to a shorter folder."
            )
        dockerd = find_command("dockerd")
        if dockerd is None:
            raise ServiceError("dockerd is not installed (Debian package docker.io).")
        for path in (self.data_root, self.exec_root, socket.parent):
            path.mkdir(parents=True, exist_ok=True)
        # Leftovers of a dockerd that did not stop cleanly (it is known not to be running).
        socket.unlink(missing_ok=True)
        self.daemon_pid_file.unlink(missing_ok=True)
        # Its own (empty) config: /etc/docker/daemon.json may set hosts or a data root.
        self.config_file.write_text("{}\n")
        search_path = f"{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
        self.spawn(
            [
                dockerd,
                f"--config-file={self.config_file}",
                f"--data-root={self.data_root}",
                f"--exec-root={self.exec_root}",
                f"--pidfile={self.daemon_pid_file}",
                f"--host={self.endpoint}",
                # Namespaced apart from a system dockerd that might share a system containerd.
                "--containerd-namespace=reflux",
                "--containerd-plugins-namespace=reflux-plugins",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--log-level=warn",
            ],
            env={"PATH": search_path},
        )

    def is_ready(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = docker_api(self.endpoint, timeout=2)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    def start(self) -> float:
        """Starts dockerd (see :meth:`Service.start`), then builds the sandbox image if the
        engine lacks it; returns dockerd's start time (the image build reports its own)."""
        seconds = super().start()
        self.ensure_image()
        return seconds

    def detail(self) -> str:
        image = sandbox_image_tag()
        state = "unknown"
        if self.is_ready():
            client = docker_api(self.endpoint)
            try:
                state = "present" if client.images.list(name=image) else "missing"
            finally:
                client.close()
        return f"data {self.data_root}; image {image} {state}; DOCKER_HOST={self.endpoint}"

    # -- the sandbox image ---------------------------------------------------------------
    @contextlib.contextmanager
    def _image_lock(self) -> Iterator[None]:
        """One builder at a time (pytest-xdist workers may run ``up`` together)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "image.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure_image(self) -> str:
        """The sandbox image's tag, built first if the engine lacks it (idempotent)."""
        tag = sandbox_image_tag()
        client = docker_api(self.endpoint, timeout=600)
        try:
            if client.images.list(name=tag):
                return tag
            with self._image_lock():
                if client.images.list(name=tag):
                    return tag
                began = time.monotonic()
                log(f"{self.name}: building the sandbox image {tag} (cold: a minute or two)")
                base = self._ensure_base_image(client)
                self._build(client, base, tag)
                log(f"{self.name}: sandbox image {tag} built in {time.monotonic() - began:.1f}s")
        finally:
            client.close()
        return tag

    def ensure_base_image(self) -> str:
        """The debootstrap base image's tag (``reflux-sandbox-base:<hash>``), imported first if
        the engine lacks it; the reflux image (infra/image/build.py) is built on it too."""
        client = docker_api(self.endpoint, timeout=600)
        try:
            with self._image_lock():
                return self._ensure_base_image(client)
        finally:
            client.close()

    def _ensure_base_image(self, client: Any) -> str:
        base = f"{BASE_REPOSITORY}:{rootfs_digest()}"
        if client.images.list(name=base):
            return base
        tarball = self.rootfs_tarball()
        if not tarball.exists():
            self._debootstrap(tarball)
        began = time.monotonic()
        log(f"{self.name}: docker import {tarball.name} as {base}")
        client.api.import_image_from_file(
            str(tarball), repository=BASE_REPOSITORY, tag=rootfs_digest()
        )
        if not client.images.list(name=base):
            raise ServiceError(f"docker import of {tarball} did not create {base}")
        log(f"{self.name}: imported in {time.monotonic() - began:.1f}s")
        return base

    def _debootstrap(self, tarball: Path) -> None:
        """A minbase root file system with the sandbox's packages, packed into ``tarball``."""
        target = tarball.with_suffix(".tmp")
        _remove_tree(target)  # a previous attempt that died half way
        included = ",".join(packages())
        mirror = self.settings.debian_mirror
        log(
            f"{self.name}: debootstrap --variant={VARIANT} {SUITE} (+ {included}) from {mirror}; "
            f"full output in {self.image_log}"
        )
        began = time.monotonic()
        self.image_log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            find_command("debootstrap") or "debootstrap",
            f"--variant={VARIANT}",
            f"--include={included}",
            "--components=main",
            SUITE,
            str(target),
            mirror,
        ]
        search_path = f"{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
        with self.image_log.open("a") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
            out.flush()
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PATH": search_path, "DEBIAN_FRONTEND": "noninteractive"},
            )
            assert process.stdout is not None
            retrieved = 0
            for line in process.stdout:
                out.write(line)
                text = line.strip().removeprefix("I: ")
                if text.startswith("Retrieving ") and not text.startswith("Retrieving In"):
                    retrieved += 1
                    if retrieved % 40 != 1:
                        continue
                    text = f"Retrieving packages ({retrieved} so far)"
                elif not text.startswith(_DEBOOTSTRAP_STAGES):
                    continue
                log(f"{self.name}:   [{time.monotonic() - began:5.1f}s] {text}")
            code = process.wait()
        if code != 0:
            _remove_tree(target)
            raise ServiceError(
                f"debootstrap failed (exit {code}); is {mirror} reachable?{tail_of(self.image_log)}"
            )
        for relative in _TRIM:
            trimmed = target / relative
            if trimmed.is_dir():
                shutil.rmtree(trimmed)
                trimmed.mkdir()
        partial = tarball.with_suffix(".part")
        subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-C",
                str(target),
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
        )
        partial.rename(tarball)
        _remove_tree(target)
        size_mb = tarball.stat().st_size / 1e6
        log(
            f"{self.name}: root file system {tarball.name} ({size_mb:.0f} MB) in "
            f"{time.monotonic() - began:.1f}s"
        )

    def _build(self, client: Any, base: str, tag: str) -> None:
        import docker.errors

        began = time.monotonic()
        log(f"{self.name}: docker build {IMAGE_DIR.name}/Dockerfile FROM {base} -> {tag}")
        try:
            client.images.build(
                path=str(IMAGE_DIR),
                tag=tag,
                buildargs={"BASE": base},
                pull=False,
                rm=True,
                forcerm=True,
                network_mode="none",
                labels={"io.reflux.sandbox-image": "1"},
            )
        except docker.errors.BuildError as exc:
            steps = "".join(
                str(entry.get("stream") or entry.get("error") or json.dumps(entry))
                for entry in exc.build_log
            )
            raise ServiceError(f"docker build of the sandbox image failed: {exc}\n{steps}") from exc
        log(f"{self.name}: built in {time.monotonic() - began:.1f}s")
