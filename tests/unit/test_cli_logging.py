"""`reflux`'s log policy: one-shot commands log at WARNING unless -v, components at INFO; logs
go to stderr, so a command's answer on stdout has no library log line in it."""

from __future__ import annotations

import logging

import pytest

from reflux import cli


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["runs", "show", "r-1"], logging.WARNING),
        (["schedules", "list"], logging.WARNING),
        (["metrics", "workflows"], logging.WARNING),
        (["topics", "list"], logging.WARNING),
        (["-v", "runs", "show", "r-1"], logging.DEBUG),
        (["schedules", "run"], logging.INFO),
        (["worker", "--nodes", "transform"], logging.INFO),
        (["scheduler"], logging.INFO),
        (["-v", "worker"], logging.DEBUG),
    ],
)
def test_log_level_per_command(argv: list[str], level: int) -> None:
    args = cli.build_parser().parse_args(argv)
    assert cli.log_level(args) == level


def test_library_info_lines_stay_out_of_a_one_shot_commands_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler that logs like httpx does (INFO per request) and answers on stdout.
    def handler(args: object) -> int:
        logging.getLogger("httpx").info('HTTP Request: GET http://x/v1/runs "HTTP/1.1 200 OK"')
        logging.getLogger("httpx").warning("a warning still shows")
        print("the answer")
        return 0

    parser = cli.build_parser()
    real_parse = parser.parse_args

    def parse(argv: list[str] | None = None) -> object:
        args = real_parse(argv)
        args.handler = handler
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()  # basicConfig only configures a root logger without handlers
    try:
        assert cli.main(["topics", "list"]) == 0
    finally:
        for added in root.handlers:
            added.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    out, err = capsys.readouterr()
    assert out == "the answer\n"
    assert "HTTP Request" not in out + err
    assert "a warning still shows" in err
