"""Testing both sides of a fast path (fastpaths/).

- `@pytest.mark.fastpath("name", ...)`: the test is about that fast path itself and is skipped in a run that
  switched it off (INGEST_FAST_PATHS, e.g. CI's second run with `none`); its public path is tested beside it.
- `@on_off("name")` + the `fast_path_on` argument: run the test with the fast path on and off in this process
  (the "on" case is skipped when the run switched it off). Only for fast paths consulted while the code runs;
  those installed at startup (serializer, transport, value class, task strategy, WSGI handler) are exercised
  through their functions, and the whole suite's second run covers their public paths end to end.
"""

from __future__ import annotations

from typing import Any

import pytest

import fastpaths


def on_off(name: str) -> Any:
    """Parametrize a test over the fast path `name` on and off; the test takes a `fast_path_on` argument."""
    parametrize = pytest.mark.parametrize(
        "fast_path_on",
        [
            pytest.param(True, id=f"{name}-on", marks=pytest.mark.fastpath(name)),
            pytest.param(False, id=f"{name}-off"),
        ],
    )

    def apply(test: Any) -> Any:
        return pytest.mark.fastpath_toggle(name)(parametrize(test))

    return apply


def switch(monkeypatch: pytest.MonkeyPatch, name: str, on: bool) -> None:
    """Switch one fast path on or off in this process for the test (not in processes it starts)."""
    current = fastpaths.switched_on()
    wanted = frozenset(current | {name} if on else current - {name})
    monkeypatch.setattr(fastpaths, "switched_on", lambda: wanted)


def skip_unless_switched_on(item: pytest.Item) -> None:
    for mark in item.iter_markers("fastpath"):
        off = [name for name in mark.args if name not in fastpaths.switched_on()]
        if off:
            pytest.skip(f"fast path {', '.join(off)} switched off by {fastpaths.ENV}")


def apply_toggle(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test made by `on_off`: switch its fast path as its `fast_path_on` parameter says."""
    mark = request.node.get_closest_marker("fastpath_toggle")
    callspec = getattr(request.node, "callspec", None)
    if mark is None or callspec is None or "fast_path_on" not in callspec.params:
        return
    switch(monkeypatch, mark.args[0], bool(callspec.params["fast_path_on"]))
