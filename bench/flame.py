"""Folded stacks ("a;b;c 12", as `py-spy record --format raw` writes them) -> a self-contained SVG flame graph
and a text summary. No third-party code: the SVG is plain rectangles with tooltips, viewable in any browser."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROW = 16
WIDTH = 1600
_LOCATION = re.compile(r" \((?P<file>[^()]*?):(?P<line>\d+)\)$")


@dataclass
class Node:
    name: str
    total: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def read_folded(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_of(frame: str) -> str:
    """'publish_events (publisher/publishing.py:210)' -> 'publish_events (publisher/publishing.py)'."""
    return _LOCATION.sub(lambda m: f" ({_short(m['file'])})", frame)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def build_tree(stacks: Iterable[tuple[list[str], int]]) -> Node:
    root = Node("all")
    for frames, count in stacks:
        root.total += count
        node = root
        for frame in frames:
            name = function_of(frame)
            node = node.children.setdefault(name, Node(name))
            node.total += count
    return root


def _color(name: str) -> str:
    if "/work/main" in name or name.split(" (")[-1].startswith(("ingestion/", "publisher/", "routing/", "config/")):
        return "#6fa8dc"  # the project's own code, in blue among the warm colours
    h = sum(map(ord, name)) % 40
    return f"hsl({20 + h}, 80%, {55 + h % 15}%)"


def svg(root: Node, title: str) -> str:
    depth = _depth(root)
    height = (depth + 2) * ROW + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" '
        f'font-size="11">',
        f'<text x="4" y="16" font-size="14">{html.escape(title)} ({root.total} samples)</text>',
    ]

    def draw(node: Node, x: float, level: int) -> None:
        w = WIDTH * node.total / root.total if root.total else 0
        if w < 0.3:
            return
        y = height - (level + 1) * ROW
        share = 100 * node.total / root.total
        label = html.escape(f"{node.name} - {node.total} samples, {share:.1f}%")
        parts.append(
            f'<g><title>{label}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" '
            f'fill="{_color(node.name)}"/>'
        )
        if w > 40:
            chars = int(w / 6.6)
            text = node.name if len(node.name) <= chars else node.name[: max(0, chars - 2)] + ".."
            parts.append(f'<text x="{x + 2:.1f}" y="{y + 11}">{html.escape(text)}</text>')
        parts.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda n: n.name):
            draw(child, child_x, level + 1)
            child_x += WIDTH * child.total / root.total

    draw(root, 0.0, 0)
    parts.append("</svg>")
    return "\n".join(parts)


def _depth(node: Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def summary(
    stacks: list[tuple[list[str], int]], *, title: str, top: int = 40, us_per_sample: float | None = None
) -> str:
    """Self time per function, and inclusive time per function (counted once per stack). With `us_per_sample`
    (microseconds of CPU one sample stands for, divided by the events handled), each line also shows us/event."""
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        names = [function_of(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    unit = "" if us_per_sample is None else f"; us = CPU microseconds per event ({us_per_sample:.4g} us/sample)"
    lines = [f"{title}: {total} samples{unit}", "", "self time (top):"]
    for name, count in own.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {_per(count, us_per_sample)}{name}")
    lines += ["", "inclusive time (top):"]
    for name, count in inclusive.most_common(top * 2):
        lines.append(f"  {100 * count / total:5.1f}%  {_per(count, us_per_sample)}{name}")
    return "\n".join(lines) + "\n"


def _per(count: int, us_per_sample: float | None) -> str:
    return "" if us_per_sample is None else f"{count * us_per_sample:8.2f} us  "
