"""A real ClickHouse server for tests, built from what the project already installs.

No ClickHouse server package can be installed on the development machine (ADR 0001: chdb only).
But chdb 3.7.2 *is* ClickHouse 25.8 compiled into one shared library (``chdb/_chdb.abi3.so``),
and that library still exports the server's own entry point, ``mainEntryClickHouseServer``
(the function behind ``clickhouse server``). Called in a child process with a config file, it
runs the complete server: HTTP interface, MergeTree, materialized views, the Kafka engine.
So ``projections.clickhouse.HttpClickHouse`` (clickhouse-connect over HTTP) can be tested
against a real server instead of a stand-in.

The child never imports the ``chdb`` Python module (its initialisation registers the query
interpreters the server registers again). The server listens on loopback only, on free ports,
keeps its data in a test folder, sends no crash reports, and runs without its watchdog fork so
that stopping the child stops the server.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.waiting import eventually

__all__ = ["ClickHouseServer", "start_clickhouse_server"]

SERVER_ENTRY = "_Z25mainEntryClickHouseServeriPPc"
"""``int mainEntryClickHouseServer(int argc, char ** argv)``, C++-mangled."""

# Runs in the child: load the library without the chdb package and hand over to the server.
_LAUNCHER = f"""
import ctypes, sys
library = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
main = getattr(library, {SERVER_ENTRY!r})
main.restype = ctypes.c_int
main.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
args = [b"clickhouse-server"] + [a.encode() for a in sys.argv[2:]]
sys.exit(main(len(args), (ctypes.c_char_p * (len(args) + 1))(*args, None)))
"""

_CONFIG = """<clickhouse>
  <send_crash_reports><enabled>false</enabled></send_crash_reports>
  <logger><console>1</console><level>warning</level></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{data}/</path>
  <tmp_path>{data}/tmp/</tmp_path>
  <user_files_path>{data}/user_files/</user_files_path>
  <format_schema_path>{data}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <shutdown_wait_unfinished>1</shutdown_wait_unfinished>
  <profiles><default/></profiles>
  <quotas><default/></quotas>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
</clickhouse>
"""


def chdb_library() -> Path:
    """The ClickHouse build inside the installed chdb wheel (found without importing chdb)."""
    spec = importlib.util.find_spec("chdb")
    if spec is None or spec.origin is None:
        pytest.fail("chdb is not installed: no ClickHouse build to run a server from")
    return Path(spec.origin).parent / "_chdb.abi3.so"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ClickHouseServer:
    process: subprocess.Popen[bytes]
    http_port: int
    folder: Path

    @property
    def dsn(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log}\n{self.log.read_text(errors='replace')[-chars:]}"

    def ping(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.dsn}/ping", timeout=2) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            return f"no answer: {exc}"

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_clickhouse_server(folder: Path, timeout: float = 60.0) -> ClickHouseServer:
    """Start a ClickHouse server with its data in ``folder``; returns once it answers /ping."""
    library = chdb_library()
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    http_port, tcp_port = _free_port(), _free_port()
    config = folder / "config.xml"
    config.write_text(_CONFIG.format(http_port=http_port, tcp_port=tcp_port, data=data))
    env = {**os.environ, "CLICKHOUSE_WATCHDOG_ENABLE": "0"}
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(library), f"--config-file={config}"],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ClickHouseServer(process, http_port, folder)

    def answers() -> str:
        if process.poll() is not None:
            pytest.fail(
                f"the ClickHouse server exited with {process.returncode} before answering "
                f"/ping:\n{server.tail()}"
            )
        return server.ping()

    try:
        eventually(
            answers,
            timeout,
            f"the ClickHouse server at {server.dsn} to answer /ping",
            until=lambda answer: answer == "Ok.\n",
            interval=0.1,
            describe=server.tail,
        )
    except BaseException:
        server.stop()
        raise
    return server
