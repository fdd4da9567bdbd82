"""Local settings in `.env`: what `make` writes there lets every entry point run in a checkout without exporting
anything, the real environment wins over it, and a missing or bad variable is one line naming it, no traceback.

The subprocesses get a clean environment (PATH and HOME only). INGEST_ENV_FILE points them at a `.env` the test
made, so the checkout's own `.env` and databases are left alone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework_api_key.models import APIKey

from ingestion.auth import KEY_FORMAT

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")} | extra


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _make_env_file(path: Path) -> None:
    result = _run(["make", "-s", f"ENV_FILE={path}", str(path)], _clean_env())
    assert result.returncode == 0, result.stderr


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_make_writes_a_private_env_file_with_a_secret_once(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    _make_env_file(env_file)
    text = env_file.read_text()
    secret = next(line.partition("=")[2] for line in text.splitlines() if line.startswith("SECRET_KEY="))
    assert len(secret) >= 50
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env_file.write_text(text + "DEBUG=false\n")
    _make_env_file(env_file)  # an existing file is the user's: never rewritten
    assert env_file.read_text() == text + "DEBUG=false\n"


@pytest.mark.django_db(transaction=True)
def test_create_api_key_runs_with_nothing_exported(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    _make_env_file(env_file)
    # The test database instead of the checkout's; no metric files in the checkout's .data/.
    with env_file.open("a") as f:
        f.write(f"DATABASE_URL={_test_database_url()}\nREDIS_URL={settings.REDIS_URL}\nPROMETHEUS_MULTIPROC_DIR=\n")
    result = _run(
        [sys.executable, "manage.py", "create_api_key", "env-file-producer"],
        _clean_env(INGEST_ENV_FILE=str(env_file)),
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert KEY_FORMAT.fullmatch(key), result.stdout
    assert APIKey.objects.get_from_key(key).name == "env-file-producer"


def test_the_real_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_KEY=from-the-file\nKAFKA_COMPRESSION_TYPE=brotli\nPROMETHEUS_MULTIPROC_DIR=\n")
    check = [sys.executable, "manage.py", "check"]
    from_file = _run(check, _clean_env(INGEST_ENV_FILE=str(env_file)))
    assert from_file.returncode != 0
    assert from_file.stderr.strip() == (
        "manage.py: KAFKA_COMPRESSION_TYPE='brotli' is not valid: expected one of none, gzip, snappy, lz4, zstd"
    )
    overridden = _run(check, _clean_env(INGEST_ENV_FILE=str(env_file), KAFKA_COMPRESSION_TYPE="zstd"))
    assert overridden.returncode == 0, overridden.stderr


@pytest.mark.parametrize(
    ("argv", "program"),
    [
        ([sys.executable, "manage.py", "check"], "manage.py"),
        ([str(Path(sys.executable).parent / "celery"), "-A", "config", "worker", "--queues", "publish"], "celery"),
        ([sys.executable, "-m", "config.serve", "--bind", "127.0.0.1:1"], "config.serve"),
    ],
    ids=["manage.py", "celery", "config.serve"],
)
def test_a_missing_secret_key_is_one_line_naming_it(argv: list[str], program: str) -> None:
    # INGEST_ENV_FILE empty: no .env at all, as on a production host that forgot the variable.
    result = _run(argv, _clean_env(INGEST_ENV_FILE="", PROMETHEUS_MULTIPROC_DIR=""))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: SECRET_KEY is required but not set")


def test_an_env_file_named_but_absent_is_an_error(tmp_path: Path) -> None:
    result = _run([sys.executable, "manage.py", "check"], _clean_env(INGEST_ENV_FILE=str(tmp_path / "missing")))
    assert result.returncode != 0
    assert result.stderr.strip() == f"manage.py: INGEST_ENV_FILE='{tmp_path / 'missing'}' is not a file"
