"""INGEST_FAST_PATHS: what each spelling switches on, and that a typo fails naming the variable."""

from __future__ import annotations

import pytest

import fastpaths
from bench.__main__ import fast_paths_env
from config.env import EnvError


def test_all_and_empty_switch_every_fast_path_on() -> None:
    assert fastpaths.parse("all") == frozenset(fastpaths.REGISTRY)
    assert fastpaths.parse(" ALL ") == frozenset(fastpaths.REGISTRY)
    assert fastpaths.parse("") == frozenset(fastpaths.REGISTRY)


def test_none_switches_every_fast_path_off() -> None:
    assert fastpaths.parse("none") == frozenset()


def test_a_comma_list_switches_on_exactly_those() -> None:
    assert fastpaths.parse("kafka_batches, celery_handoff,") == {"kafka_batches", "celery_handoff"}


@pytest.mark.parametrize("text", ["kafka_batch", "kafka_batches,typo", ",", "off"])
def test_an_unknown_name_is_refused_naming_the_variable_and_the_choices(text: str) -> None:
    with pytest.raises(EnvError) as refused:
        fastpaths.parse(text)
    message = str(refused.value)
    assert message.startswith("INGEST_FAST_PATHS=")
    assert "kafka_batches" in message  # the valid names are listed


def test_every_registered_fast_path_has_a_module_with_its_gate() -> None:
    for name in fastpaths.REGISTRY:
        module = fastpaths.module(name)
        assert name == module.NAME
        assert module.VERIFIED, f"{name} names no verified versions"
        assert callable(module.enabled)
        assert module.__doc__ and len(module.__doc__) > 80, f"{name} does not say what it replaces"


def test_bench_minus_name_means_every_fast_path_but_that_one() -> None:
    setting = fast_paths_env("-kafka_batches")
    assert fastpaths.parse(setting) == frozenset(fastpaths.REGISTRY) - {"kafka_batches"}
    with pytest.raises(EnvError):
        fast_paths_env("-nonexistent")
