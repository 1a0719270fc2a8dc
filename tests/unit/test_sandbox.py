"""Pure parts of the code runner: request validation, limit mapping, the bwrap command, result
classification, log truncation, safe output collection, the docker backend's archive and image
tag (no sandbox is started here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from node_workers.node import NonRetryableNodeError, RetryableNodeError, validate_params
from node_workers.nodes.code_run import CodeRunNode, error_for_result
from node_workers.sandbox import (
    CodeRunRequest,
    CodeRunResult,
    LimitAboveMaximumError,
    Limits,
    NetworkNotAllowedError,
    RawRun,
    SandboxConfig,
    SandboxJob,
    SandboxRunner,
    SandboxUnavailableError,
    UnsupportedRequestError,
    build_command,
    resource_limits,
)
from node_workers.sandbox.bubblewrap import LAUNCHER
from node_workers.sandbox.cgroups import CgroupV1, cgroup_join_prefix
from node_workers.sandbox.definition_check import sandbox_limit_errors
from node_workers.sandbox.docker_backend import _work_archive
from node_workers.sandbox.image import DOCKERFILE, packages, sandbox_image_tag
from node_workers.sandbox.limits import (
    DEFAULT_SANDBOX_GID,
    DEFAULT_SANDBOX_UID,
    IMAGE_INTERPRETERS,
    MIB,
)
from node_workers.sandbox.logs import HeadTailBuffer
from node_workers.sandbox.runner import check_policy, exit_hint, result_from_run
from node_workers.sandbox.workdir import collect_outputs, directory_usage, work_overflow
from workflows.validation import build_definition

BASE: dict[str, Any] = {"lang": "python", "entry": "main.py", "code": "print(1)"}


def _invalid(**changes: Any) -> str:
    raw = {**BASE, **changes}
    with pytest.raises(NonRetryableNodeError) as caught:
        validate_params(CodeRunNode(), raw)
    assert caught.value.error_class == "ValidationError"
    return str(caught.value)


def test_request_defaults_and_seed_aliases() -> None:
    request = CodeRunRequest.model_validate(
        {
            "lang": "node",
            "entry": "src/index.js",
            "code_ref": {"s3Url": "s3://reflux/code/a.js"},
            "inputs": [{"name": "data/a.csv", "url": "s3://reflux/in/a.csv"}],
            "limits": {"cpu": 0.5, "memMb": 256, "timeoutSec": 10},
        }
    )
    assert request.code_ref is not None and request.code_ref.uri == "s3://reflux/code/a.js"
    assert (request.limits.mem_mb, request.limits.timeout_sec) == (256, 10)
    assert request.limits.network == "off"
    assert CodeRunRequest.model_validate(
        {**BASE, "code": None, "code_ref": {"uri": "s3://bucket/k"}}
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lang": "ruby"}, "params.lang: Input should be 'python', 'node' or 'bash'"),
        (
            {"entry": "../main.py"},
            "params.entry: Value error, Expected entry without '.' or '..' segments",
        ),
        ({"entry": "/etc/passwd"}, "params.entry: Value error, Expected entry to be a relative"),
        ({"entry": "out/main.py"}, "params.entry: Value error, Expected entry outside in/"),
        ({"entry": "a b.py"}, "segments of letters"),
        ({"code_ref": {"uri": "s3://reflux/x"}}, "params: Value error, Expected exactly one of"),
        ({"code": None}, "Expected exactly one of code and code_ref"),
        ({"code": "x" * (1024 * 1024 + 1)}, "params.code: Value error, Expected code of at most"),
        (
            {"inputs": [{"name": "../x", "url": "s3://reflux/k"}]},
            "params.inputs[0].name: Value error",
        ),
        (
            {"inputs": [{"name": "a", "url": "http://example.com/a"}]},
            "params.inputs[0].url: Value error, Expected an object store URI",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "url": "s3://reflux/1"},
                    {"name": "a", "url": "s3://reflux/2"},
                ]
            },
            "params.inputs: Value error, Expected unique input names, but ['a'] repeat",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "url": "s3://reflux/1"},
                    {"name": "a/b", "url": "s3://reflux/2"},
                ]
            },
            "Expected input 'a' not to be a parent of 'a/b'",
        ),
        ({"packages": ["requests"]}, "params: Value error, Expected no packages with limits"),
        (
            {"packages": ["--index-url=http://evil"], "limits": {"network": "full"}},
            "params.packages: Value error, Expected a package requirement",
        ),
        (
            {"lang": "bash", "packages": ["jq"], "limits": {"network": "full"}},
            "Expected no packages for lang 'bash'",
        ),
        ({"limits": {"memMb": 1}}, "params.limits.memMb: Input should be greater than or equal"),
        ({"limits": {"timeoutSec": 0}}, "params.limits.timeoutSec: Input should be greater"),
        ({"limits": {"network": "some"}}, "params.limits.network: Input should be 'off'"),
        ({"limits": {"cpus": 1}}, "params.limits.cpus: Extra inputs are not permitted"),
    ],
)
def test_invalid_requests_name_the_field(changes: dict[str, Any], expected: str) -> None:
    assert expected in _invalid(**changes)


def test_limit_mapping() -> None:
    limits = resource_limits(
        Limits.model_validate({"cpu": 0.5, "memMb": 256, "timeoutSec": 9, "processes": 64}),
        SandboxConfig(max_output_bytes=8 * MIB),
    )
    assert limits.cpu_seconds == 5  # ceil(0.5 * 9)
    assert limits.data_bytes == 256 * MIB
    assert limits.address_space_bytes == (256 + 4096) * MIB
    assert limits.file_size_bytes == 8 * MIB + 1
    assert limits.prlimit_args("/p") == [
        "/p",
        "--cpu=5:6",
        f"--data={256 * MIB}",
        f"--as={(256 + 4096) * MIB}",
        "--nproc=64",
        f"--fsize={8 * MIB + 1}",
        "--nofile=256",
        "--core=0",
        "--",
    ]
    tiny = resource_limits(Limits.model_validate({"cpu": 0.01, "timeoutSec": 1}), SandboxConfig())
    assert tiny.cpu_seconds == 1  # never 0: RLIMIT_CPU 0 would kill at once


def _job(tmp_path: Path, **changes: Any) -> SandboxJob:
    request = CodeRunRequest.model_validate({**BASE, **changes})
    return SandboxJob(
        lang=request.lang,
        entry=request.entry,
        network=request.limits.network,
        limits=resource_limits(request.limits, SandboxConfig()),
        host_work=tmp_path / "work",
        host_inputs=tmp_path / "in",
        packages=tuple(request.packages),
    )


def _pairs(command: list[str], option: str) -> list[tuple[str, str]]:
    return [(command[i + 1], command[i + 2]) for i, arg in enumerate(command) if arg == option]


def test_bwrap_command_isolates_by_default(tmp_path: Path) -> None:
    config = SandboxConfig()
    command = build_command(
        _job(tmp_path), config, as_root=True, status_fd=7, usage_fd=8, root_entries=[]
    )
    assert command[:6] == [
        "/usr/bin/setpriv",
        "--reuid=65432",
        "--regid=65432",
        "--clear-groups",
        "--no-new-privs",
        "--",
    ]
    sandbox = command[: command.index("--", 6)]
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert flag in sandbox
    assert "--share-net" not in sandbox
    assert sandbox[len(sandbox) - 1 - sandbox[::-1].index("--remount-ro") + 1] == "/"
    # The only writable bind is the run's work dir; inputs are read-only; nothing of the host's
    # home, project or /var is mounted.
    assert _pairs(sandbox, "--bind") == [(str(tmp_path / "work"), "/work")]
    assert (str(tmp_path / "in"), "/work/in") in _pairs(sandbox, "--ro-bind")
    sources = {src for src, _ in _pairs(sandbox, "--ro-bind") + _pairs(sandbox, "--ro-bind-try")}
    assert not {s for s in sources if s.startswith(("/root", "/home", "/var", "/run"))}
    assert "/etc/resolv.conf" not in sources
    assert ("/usr", "/usr") in _pairs(sandbox, "--ro-bind")
    # Both writable tmpfs have a size: /dev/shm its own (not a folder of /dev's unsized tmpfs)
    tmpfs = [sandbox[i - 2 : i + 2] for i, arg in enumerate(sandbox) if arg == "--tmpfs"]
    assert tmpfs == [
        ["--size", str(64 * MIB), "--tmpfs", "/dev/shm"],
        ["--size", str(64 * MIB), "--tmpfs", "/tmp"],
    ]
    assert sandbox.index("--dev") < sandbox.index("/dev/shm")  # mounted over /dev's folder
    # /dev's own tmpfs (unsized) is read-only once /dev/shm is mounted on it
    assert [sandbox[i + 1] for i, a in enumerate(sandbox) if a == "--remount-ro"] == ["/dev", "/"]
    assert sandbox[sandbox.index("--json-status-fd") + 1] == "7"
    assert "--seccomp" not in sandbox  # only with a filter's fd
    filtered = build_command(_job(tmp_path), config, as_root=False, seccomp_fd=9, root_entries=[])
    assert filtered[filtered.index("--seccomp") + 1] == "9"
    assert filtered.index("--seccomp") < filtered.index("--")
    inner = command[command.index("--", 6) + 1 :]
    assert inner[:4] == ["/usr/bin/python3", "-I", "-S", "-c"]
    assert inner[5] == "8"  # the launcher reports peak memory on fd 8
    assert inner[6] == "/usr/bin/prlimit"
    assert inner[-6:] == ["/usr/bin/nice", "-n", "10", "--", "/usr/bin/python3", "-s"] or inner[
        -7:
    ] == ["/usr/bin/nice", "-n", "10", "--", "/usr/bin/python3", "-s", "main.py"]
    assert inner[-1] == "main.py"


def test_bwrap_command_network_packages_and_non_root(tmp_path: Path) -> None:
    job = _job(tmp_path, packages=["requests==2.32.3"], limits={"network": "full"})
    command = build_command(job, SandboxConfig(), as_root=False, root_entries=[])
    assert command[0] == "/usr/bin/bwrap"  # no setpriv: already unprivileged
    assert "--share-net" in command
    assert "/etc/resolv.conf" in command
    shell = command[command.index("/bin/sh") :]
    assert shell[1] == "-c"
    assert "pip install" in shell[2] and "--target /work/.packages -- requests==2.32.3" in shell[2]
    assert shell[-3:] == ["/usr/bin/python3", "-s", "main.py"]
    env = dict(_pairs(command, "--setenv"))
    assert env["PYTHONPATH"] == "/work/.packages"
    assert env["HOME"] == "/work" and env["REFLUX_OUT"] == "/work/out"

    node = build_command(
        _job(tmp_path, lang="node", entry="index.js"),
        SandboxConfig(),
        as_root=False,
        root_entries=[],
    )
    assert node[-2:] == ["/usr/bin/node", "index.js"]


def test_root_layout_is_recreated(tmp_path: Path) -> None:
    command = build_command(_job(tmp_path), SandboxConfig(), as_root=False)
    for path in ("/bin", "/lib"):
        if os.path.islink(path):
            assert (os.readlink(path), path) in _pairs(command, "--symlink")


def test_network_policy() -> None:
    limited = CodeRunRequest.model_validate({**BASE, "limits": {"network": "limited"}})
    with pytest.raises(UnsupportedRequestError, match="'limited'"):
        check_policy(limited, SandboxConfig())
    full = CodeRunRequest.model_validate({**BASE, "limits": {"network": "full"}})
    with pytest.raises(NetworkNotAllowedError, match="does not allow network"):
        check_policy(full, SandboxConfig())
    check_policy(full, SandboxConfig(allow_network=True))
    check_policy(CodeRunRequest.model_validate(BASE), SandboxConfig())


def test_requests_over_the_operator_maximums_are_refused_with_the_field_path() -> None:
    config = SandboxConfig(max_mem_mb=256, max_cpu=1.0, max_processes=64, max_timeout_sec=30)
    fits = {"memMb": 256, "cpu": 1, "processes": 64, "timeoutSec": 30}
    check_policy(CodeRunRequest.model_validate({**BASE, "limits": fits}), config)
    over = {"memMb": 257, "cpu": 2, "processes": 65, "timeoutSec": 31}
    with pytest.raises(LimitAboveMaximumError) as caught:
        check_policy(CodeRunRequest.model_validate({**BASE, "limits": over}), config)
    assert caught.value.error_class == "LimitAboveMaximum" and not caught.value.retryable
    assert str(caught.value) == (
        "params.limits.memMb: Expected at most 256 (this worker's maximum, "
        "REFLUX_SANDBOX_MAX_MEM_MB), but got 257; "
        "params.limits.cpu: Expected at most 1 (this worker's maximum, "
        "REFLUX_SANDBOX_MAX_CPU), but got 2; "
        "params.limits.processes: Expected at most 64 (this worker's maximum, "
        "REFLUX_SANDBOX_MAX_PROCESSES), but got 65; "
        "params.limits.timeoutSec: Expected at most 30 (this worker's maximum, "
        "REFLUX_SANDBOX_MAX_TIMEOUT_SEC), but got 31"
    )
    # the defaults of the model fit the default maximums
    check_policy(CodeRunRequest.model_validate(BASE), SandboxConfig())


def test_maximums_and_sizes_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "REFLUX_SANDBOX_MAX_MEM_MB": "300",
        "REFLUX_SANDBOX_MAX_CPU": "0.5",
        "REFLUX_SANDBOX_MAX_PROCESSES": "40",
        "REFLUX_SANDBOX_MAX_TIMEOUT_SEC": "12",
        "REFLUX_SANDBOX_MAX_OUTPUT_MB": "5",
        "REFLUX_SANDBOX_TMP_MB": "20",
        "REFLUX_SANDBOX_SHM_MB": "10",
    }.items():
        monkeypatch.setenv(name, value)
    config = SandboxConfig.from_settings(Settings(), backend="bubblewrap")
    assert config.maximums() == {"memMb": 300, "cpu": 0.5, "processes": 40, "timeoutSec": 12}
    assert (config.max_output_bytes, config.tmp_size_bytes, config.shm_size_bytes) == (
        5 * MIB,
        20 * MIB,
        10 * MIB,
    )
    assert config.backend == "bubblewrap"
    assert SandboxRunner(settings=Settings()).config.max_mem_mb == 300


def test_shm_is_bounded_by_the_memory_limit() -> None:
    small = resource_limits(Limits.model_validate({"memMb": 32}), SandboxConfig())
    assert small.shm_size_bytes == 32 * MIB
    assert resource_limits(Limits(), SandboxConfig()).shm_size_bytes == 64 * MIB


def test_definitions_with_code_run_limits_over_the_maximum_are_refused() -> None:
    definition = build_definition(
        {
            "id": "limits",
            "steps": [
                {"id": "ok", "node": "code.run", "params": {**BASE, "limits": {"memMb": 64}}},
                {
                    "id": "big",
                    "node": "code.run",
                    "params": {**BASE, "limits": {"memMb": 9000, "cpu": "{{ inputs.cpu }}"}},
                },
                {"id": "other", "node": "transform", "params": {"limits": {"memMb": 9000}}},
            ],
        }
    )
    errors = sandbox_limit_errors(definition, SandboxConfig(max_mem_mb=4096))
    assert [str(e) for e in errors] == [
        "steps[1].params.limits.memMb: Expected at most 4096 (the sandbox's maximum, "
        "REFLUX_SANDBOX_MAX_MEM_MB), but got 9000"
    ]


def test_no_backend_is_a_non_retryable_error_with_a_fix() -> None:
    runner = SandboxRunner(SandboxConfig(backend="bubblewrap", bwrap_path="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailableError) as caught:
        runner.backend()
    assert caught.value.error_class == "SandboxUnavailable"
    assert not caught.value.retryable
    assert "/nonexistent/bwrap" in str(caught.value)
    assert "apt-get install -y bubblewrap" in str(caught.value)


def _raw(**changes: Any) -> RawRun:
    values: dict[str, Any] = {
        "exit_code": 0,
        "duration_ms": 12.5,
        "peak_mem_mb": 9.0,
        "logs": "hello\n",
        "logs_truncated": False,
    }
    return RawRun(**{**values, **changes})


def _result(raw: RawRun, collection_error: tuple[str, str] | None = None) -> CodeRunResult:
    limits = resource_limits(Limits(), SandboxConfig())
    return result_from_run(
        raw, backend="bubblewrap", outputs=[], collection_error=collection_error, limits=limits
    )


def test_result_classification() -> None:
    assert _result(_raw()).status == "ok" and _result(_raw()).error is None
    failed = _result(_raw(exit_code=3))
    assert (failed.status, failed.error and failed.error.error_class) == ("error", "CodeFailed")
    timeout = _result(_raw(exit_code=-1, timed_out=True))
    assert timeout.status == "timeout"
    assert timeout.error is not None and "within 60s" in timeout.error.message
    killed = _result(_raw(exit_code=-1, killed_reason="OutputTooLarge", killed_message="big"))
    assert killed.error is not None and killed.error.error_class == "OutputTooLarge"
    # A program that died writing past the cap is told about the cap, not just "exit 1".
    capped = _result(_raw(exit_code=1), ("OutputTooLarge", "Expected at most"))
    assert capped.error is not None and capped.error.error_class == "OutputTooLarge"


def test_exit_hints() -> None:
    limits = resource_limits(Limits.model_validate({"timeoutSec": 3}), SandboxConfig())
    assert "CPU-time limit of 3s" in exit_hint(128 + 24, limits)
    assert "SIGXFSZ" in exit_hint(128 + 25, limits)
    assert "SIGKILL" in exit_hint(137, limits)
    assert exit_hint(1, limits) == exit_hint(255 + 1, limits) == ""


def test_node_errors_for_results() -> None:
    failed = _result(_raw(exit_code=2, logs="x" * 5000 + "Traceback: boom"))
    error = error_for_result(failed)
    assert isinstance(error, NonRetryableNodeError) and error.error_class == "CodeFailed"
    assert "exit code 2" in str(error) and str(error).endswith("Traceback: boom")
    assert len(str(error)) < 2000
    timeout = error_for_result(_result(_raw(exit_code=-1, timed_out=True)))
    assert isinstance(timeout, RetryableNodeError) and timeout.error_class == "CodeTimeout"


def test_code_run_node_manifest() -> None:
    node = CodeRunNode()
    node.check()
    assert (node.key, node.cacheable, node.side_effects) == ("code.run@1.0.0", False, True)
    schema = node.manifest()["input_schema"]
    assert {"lang", "entry", "code", "code_ref", "inputs", "packages", "limits"} <= set(
        schema["properties"]
    )
    assert "allow_failure" in schema["properties"]


def test_head_tail_buffer() -> None:
    buffer = HeadTailBuffer(64)
    buffer.write(b"a" * 10)
    assert (buffer.text(), buffer.truncated) == ("a" * 10, False)
    for _ in range(100):
        buffer.write(b"0123456789")
    buffer.write(b"THE-END")
    text = buffer.text()
    assert buffer.truncated and buffer.total == 1017
    assert text.startswith("a" * 10 + "012345")
    assert text.endswith("THE-END")
    assert "[... 953 bytes of logs truncated ...]" in text
    with pytest.raises(ValueError, match="at least 16"):
        HeadTailBuffer(8)


def test_collect_outputs_skips_links_and_special_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("a")
    (out / "sub" / "b.json").write_text("{}")
    (out / "leak").symlink_to("/etc/hostname")
    (out / "dirlink").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(out / "sock"))
        collected = collect_outputs(out, max_bytes=100, max_files=10)
    assert [(f.name, f.size) for f in collected.files] == [("a.txt", 1), ("sub/b.json", 2)]
    assert sorted(collected.skipped) == ["dirlink", "fifo", "leak", "sock"]
    assert collected.error_class is None


def test_collect_outputs_caps(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 60)
    (tmp_path / "b").write_bytes(b"x" * 60)
    too_big = collect_outputs(tmp_path, max_bytes=100, max_files=10)
    assert too_big.error_class == "OutputTooLarge" and too_big.files == []
    too_many = collect_outputs(tmp_path, max_bytes=1000, max_files=1)
    assert too_many.error_class == "TooManyOutputs"
    size, entries = directory_usage(tmp_path)
    assert (size, entries) >= (120, 2)


def test_work_overflow_allows_one_file_at_the_fsize_cap(tmp_path: Path) -> None:
    limits = resource_limits(Limits(), SandboxConfig(max_output_bytes=64 * 1024))
    (tmp_path / "main.py").write_bytes(b"x" * 10)
    (tmp_path / "out").mkdir()
    # RLIMIT_FSIZE stops a file at cap + 1 bytes; the check after the run reports it.
    (tmp_path / "out" / "big.bin").write_bytes(b"x" * (64 * 1024 + 1))
    assert work_overflow(tmp_path, limits) is None
    (tmp_path / "out" / "second.bin").write_bytes(b"x" * 32 * 1024)
    message = work_overflow(tmp_path, limits)
    assert message is not None and "the sandbox was killed" in message
    # What lives in the work directory but is not the program's (Docker's inputs) is excluded.
    assert work_overflow(tmp_path, limits, baseline=directory_usage(tmp_path / "out")) is None


def test_launcher_reporting_on_stderr_joins_the_programs_stderr_to_stdout() -> None:
    """The docker backend runs the launcher with report fd 2: the container's stderr then
    carries only the report, and the program's two streams stay one ordered log."""
    program = "import sys; print('out', flush=True); sys.stderr.write('err\\n'); sys.exit(3)"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, "2", sys.executable, "-c", program],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 3
    assert done.stdout == b"out\nerr\n"
    assert json.loads(done.stderr)["maxrss_kib"] > 0


def test_launcher_alarm_ends_a_run_nobody_ended() -> None:
    started = time.monotonic()
    launcher = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, "2:1", "/bin/sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert launcher.wait(timeout=10) == -signal.SIGALRM
        assert 0.9 < time.monotonic() - started < 5
    finally:
        # Under Docker, docker-init ends the rest when the launcher goes; here: its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def test_docker_work_archive_makes_inputs_read_only(tmp_path: Path) -> None:
    config = SandboxConfig()
    job = _job(tmp_path)
    for folder in (job.host_work / "out", job.host_work / "in", job.host_inputs / "data"):
        folder.mkdir(parents=True)
    (job.host_work / "main.py").write_text("print(1)")
    (job.host_inputs / "data" / "table.csv").write_text("a,b\n")
    (job.host_work / "out" / "link").symlink_to("/etc/hostname")
    with tarfile.open(fileobj=io.BytesIO(_work_archive(job, config))) as tar:
        members = {m.name: (m.type, m.uid, m.gid, m.mode) for m in tar.getmembers()}
    user = (config.uid, config.gid)
    assert members == {
        "main.py": (tarfile.REGTYPE, *user, 0o600),
        "out": (tarfile.DIRTYPE, *user, 0o700),
        # Owned by root: the sandbox user can read but neither write nor chmod them.
        "in": (tarfile.DIRTYPE, 0, 0, 0o755),
        "in/data": (tarfile.DIRTYPE, 0, 0, 0o755),
        "in/data/table.csv": (tarfile.REGTYPE, 0, 0, 0o444),
    }  # and the symlink is not copied in


def test_sandbox_image_is_named_by_its_content() -> None:
    tag = sandbox_image_tag()
    assert re.fullmatch(r"reflux-sandbox:[0-9a-f]{12}", tag)
    assert SandboxConfig().image == tag
    assert {"python3", "nodejs"} <= set(packages())
    dockerfile = DOCKERFILE.read_text()
    # The image's user and /work are the sandbox config's ids.
    assert f"--uid {DEFAULT_SANDBOX_UID}" in dockerfile
    assert f"--gid {DEFAULT_SANDBOX_GID}" in dockerfile
    # The launcher and the interpreters the backend runs exist at these paths in Debian.
    assert set(IMAGE_INTERPRETERS.values()) == {"/usr/bin/python3", "/usr/bin/node", "/bin/bash"}


def test_no_docker_engine_is_a_non_retryable_error_with_a_fix(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    runner = SandboxRunner(SandboxConfig(backend="docker", docker_host=host))
    with pytest.raises(SandboxUnavailableError) as caught:
        runner.backend()
    assert not caught.value.retryable
    assert f"no Docker engine answered ping at {host}" in str(caught.value)
    assert "`make up` starts one" in str(caught.value)


def test_cgroup_join_prefix_writes_its_pid_then_execs(tmp_path: Path) -> None:
    files = [str(tmp_path / "a.procs"), str(tmp_path / "b.procs")]
    command = [*cgroup_join_prefix(files), "/bin/sh", "-c", "echo $$"]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    pid = ran.stdout.strip()
    assert [Path(f).read_text().strip() for f in files] == [pid, pid]  # exec kept the pid


def test_cgroup_v1_groups_carry_the_run_limits(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup groups are created by a root worker only")
    for controller in ("memory", "pids", "cpu"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    cgroups = CgroupV1(tmp_path)
    assert cgroups.available, cgroups.problem
    limits = resource_limits(
        Limits.model_validate({"memMb": 128, "cpu": 1.5, "processes": 32}), SandboxConfig()
    )
    group = cgroups.create(limits)
    memory, pids, cpu = group.paths
    assert memory.parent == tmp_path / "memory" / "reflux-sandbox"
    assert int((memory / "memory.limit_in_bytes").read_text()) == (128 + 64 + 64 + 64) * MIB
    assert (pids / "pids.max").read_text() == "40"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "200000"  # ceil(1.5) whole CPUs
    assert group.procs_files[0] == str(memory / "cgroup.procs")
    missing = CgroupV1(tmp_path / "nowhere")
    assert not missing.available and "no cgroup v1 memory controller" in (missing.problem or "")
