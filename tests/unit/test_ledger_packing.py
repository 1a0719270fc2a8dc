"""The attempt ledger writes its Redis commands itself (node_workers.ledger.pack_commands): the
bytes must be exactly those redis-py's own encoder writes, for every shape the ledger sends."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from node_workers.ledger import Command, pack_commands

RESULT = bytes(range(256)) * 40  # a recorded result: binary Avro, with \r\n inside, > 6 KB


def _redis_py(commands: list[Command]) -> bytes:
    return b"".join(Connection().pack_commands(commands))


def test_the_ledgers_commands_are_packed_as_redis_py_packs_them() -> None:
    key = "reflux:attempt:6f1c2e9a-0b7d-4c1e-9f3a-1d2e3f4a5b6c"
    commands: list[Command] = [
        ("SET", key, b"started", "NX", "EX", 604_800),
        ("GET", key),
        ("SET", key, b"done:" + RESULT, "EX", 604_800),
    ]
    assert pack_commands(commands) == _redis_py(commands)


def test_text_is_utf8_and_numbers_are_decimal() -> None:
    commands: list[Command] = [("SET", "clé-ünïcode-键", "välue", "EX", 0), ("GET", "")]
    assert pack_commands(commands) == _redis_py(commands)
    assert pack_commands([("EXPIRE", "k", -1)]) == b"*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n-1\r\n"


def test_no_commands_is_no_bytes() -> None:
    assert pack_commands([]) == b""
