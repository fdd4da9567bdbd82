"""The web launcher's settings: a bad bind address or count fails fast, naming the variable."""

from __future__ import annotations

import pytest

from config.env import EnvError
from config.serve import main, parse_args, split_bind


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:8083", ("127.0.0.1", 8083)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9000", ("::1", 9000))],
)
def test_bind_is_split_into_host_and_port(bind: str, expected: tuple[str, int]) -> None:
    assert split_bind(bind, name="INGEST_BIND") == expected


@pytest.mark.parametrize("bind", ["8083", ":8083", "localhost:", "localhost:http", "localhost:70000", "localhost:0"])
def test_a_bad_bind_names_the_variable_and_the_form(bind: str) -> None:
    with pytest.raises(EnvError, match=r"INGEST_BIND=.* is not host:port"):
        split_bind(bind, name="INGEST_BIND")


def test_options_default_to_the_environment() -> None:
    args = parse_args([])
    assert (args.bind, args.workers, args.threads, args.access_log) == (None, None, None, False)
    args = parse_args(["--bind", "0.0.0.0:8083", "--workers", "3", "--threads", "8", "--access-log"])
    assert (args.bind, args.workers, args.threads, args.access_log) == ("0.0.0.0:8083", 3, 8, True)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("INGEST_BIND", "8083", "INGEST_BIND='8083' is not host:port"),
        ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY='two' is not an integer"),
        ("WEB_THREADS", "0", "WEB_THREADS='0' is too small"),
    ],
)
def test_the_server_refuses_to_start_on_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        main([])
    assert message in str(exited.value.code)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bind", "localhost"], "--bind='localhost' is not host:port"),
        (["--workers", "0"], "--workers and --threads must be at least 1"),
        (["--threads", "-1"], "--workers and --threads must be at least 1"),
    ],
)
def test_the_server_refuses_to_start_on_a_bad_option(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert message in str(exited.value.code)
