"""The topology as a Mermaid flowchart, generated from the manifest (`infra/topology.py`).

`python -m infra.diagram` prints the README's marked section; `python -m infra.diagram --write`
rewrites that section of README.md in place. `tests/unit/test_diagram.py` fails when the README
is out of date, so the picture cannot drift from the manifest.

What is drawn, in manifest order: clients -> each public HTTP function; each schedule -> its
topic; each bucket -> its notification topic; each topic -> each function subscribed to it (edge
labelled with the subscription), with a dotted edge from that function to the subscription's
dead-letter topic; each function -> each topic it publishes to. Stdlib only, like the manifest.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.topology import Function, Topology, Trigger

START_MARKER = "<!-- topology:start -->"
END_MARKER = "<!-- topology:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "python -m infra.diagram --write"

# Mermaid shapes by kind: (opening, closing) around the quoted label.
_SHAPES: dict[str, tuple[str, str]] = {
    "client": ("((", "))"),  # circle
    "fn": ("[", "]"),  # rectangle
    "topic": ("([", "])"),  # stadium
    "dlq": ("([", "])"),  # stadium, styled as a dead-letter sink
    "schedule": ("{{", "}}"),  # hexagon
    "bucket": ("[(", ")]"),  # cylinder
}
# One style per kind, emitted in this order.
_STYLES: dict[str, str] = {
    "client": "fill:#f5f5f5,stroke:#616161,color:#212121",
    "fn": "fill:#e3f2fd,stroke:#1565c0,color:#0d47a1",
    "topic": "fill:#fff8e1,stroke:#f9a825,color:#5d4037",
    "dlq": "fill:#ffebee,stroke:#c62828,color:#b71c1c",
    "schedule": "fill:#f3e5f5,stroke:#6a1b9a,color:#4a148c",
    "bucket": "fill:#e8f5e9,stroke:#2e7d32,color:#1b5e20",
}
_ID_PREFIX = {"client": "", "fn": "fn_", "topic": "topic_", "dlq": "topic_",
              "schedule": "schedule_", "bucket": "bucket_"}
_INDENT = "    "
# Mermaid entity codes for characters that would end or reinterpret a quoted label.
_ESCAPES = str.maketrans({"#": "#35;", '"': "#quot;", "&": "#amp;", "<": "#lt;", ">": "#gt;"})


@dataclass(frozen=True)
class _Node:
    id: str
    kind: str
    label: tuple[str, ...]  # lines


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    label: str = ""
    dotted: bool = False


def _text(value: str) -> str:
    """A label line safe inside Mermaid double quotes."""
    return value.translate(_ESCAPES)


class _Graph:
    """Nodes keyed by (kind group, manifest name), with ids unique across the whole diagram."""

    def __init__(self) -> None:
        self.nodes: list[_Node] = []
        self.edges: list[_Edge] = []
        self._ids: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def add(self, group: str, name: str, kind: str, *label: str) -> None:
        base = _ID_PREFIX[kind] + re.sub(r"[^A-Za-z0-9_]", "_", name)
        if not re.match(r"[A-Za-z_]", base):
            base = "_" + base
        node_id, n = base, 1
        while node_id in self._used:  # "a.b" and "a-b" both sanitize to a_b
            n += 1
            node_id = f"{base}_{n}"
        self._used.add(node_id)
        self._ids[(group, name)] = node_id
        self.nodes.append(_Node(node_id, kind, label or (name,)))

    def id(self, group: str, name: str, referrer: str) -> str:
        try:
            return self._ids[(group, name)]
        except KeyError:
            raise ValueError(f"{referrer} refers to {group} {name!r}, which the manifest does "
                             f"not declare") from None

    def edge(self, source: str, target: str, label: str = "", *, dotted: bool = False) -> None:
        self.edges.append(_Edge(source, target, label, dotted))


def _function_label(function: Function) -> tuple[str, str]:
    if function.trigger is Trigger.HTTP:
        return function.name, "HTTP" if function.public else "HTTP, private"
    if function.trigger is Trigger.TOPIC:
        return function.name, "Pub/Sub push"
    return function.name, "scheduled"


def _graph(topology: Topology) -> _Graph:
    graph = _Graph()
    public = [f for f in topology.functions if f.trigger is Trigger.HTTP and f.public]
    if public:
        graph.add("client", "clients", "client")
    for function in topology.functions:
        graph.add("function", function.name, "fn", *_function_label(function))
    dead_letters = {s.dead_letter_topic for s in topology.subscriptions}
    for topic in topology.topics:
        graph.add("topic", topic.name, "dlq" if topic.name in dead_letters else "topic")
    for schedule in topology.schedules:
        graph.add("schedule", schedule.name, "schedule",
                  schedule.name, schedule.cron, schedule.time_zone)
    for bucket in topology.buckets:
        graph.add("bucket", bucket.name, "bucket")

    for function in public:
        graph.edge("clients", graph.id("function", function.name, "clients"))
    for schedule in topology.schedules:
        where = f"schedule {schedule.name!r}"
        graph.edge(graph.id("schedule", schedule.name, where),
                   graph.id("topic", schedule.topic, where))
    for bucket in topology.buckets:
        if bucket.notification_topic is not None:
            where = f"bucket {bucket.name!r}"
            graph.edge(graph.id("bucket", bucket.name, where),
                       graph.id("topic", bucket.notification_topic, where),
                       ", ".join(bucket.notification_events))
    for sub in topology.subscriptions:
        where = f"subscription {sub.name!r}"
        function_id = graph.id("function", sub.function, where)
        graph.edge(graph.id("topic", sub.topic, where), function_id, sub.name)
        if sub.dead_letter_topic is not None:
            graph.edge(function_id, graph.id("topic", sub.dead_letter_topic, where),
                       f"DLQ: {sub.name}, {sub.max_delivery_attempts} attempts", dotted=True)
    for function in topology.functions:
        where = f"function {function.name!r}"
        for published in function.publishes:
            graph.edge(graph.id("function", function.name, where),
                       graph.id("topic", published, where))
    return graph


def mermaid(topology: Topology) -> str:
    """The topology as a Mermaid `flowchart LR`, ending with a newline."""
    graph = _graph(topology)
    lines = ["flowchart LR",
             f"{_INDENT}%% Generated from infra/topology.py by `{REGENERATE}`; do not edit."]
    for node in graph.nodes:
        opening, closing = _SHAPES[node.kind]
        label = "<br/>".join(_text(line) for line in node.label)
        lines.append(f'{_INDENT}{node.id}{opening}"{label}"{closing}:::{node.kind}')
    for edge in graph.edges:
        arrow = "-.->" if edge.dotted else "-->"
        label = f'|"{_text(edge.label)}"|' if edge.label else ""
        lines.append(f"{_INDENT}{edge.source} {arrow}{label} {edge.target}")
    kinds = {node.kind for node in graph.nodes}
    lines += [f"{_INDENT}classDef {kind} {style}"
              for kind, style in _STYLES.items() if kind in kinds]
    return "\n".join(lines) + "\n"


def readme_section(topology: Topology) -> str:
    """The README's marked block (markers included, no trailing newline)."""
    return f"{START_MARKER}\n```mermaid\n{mermaid(topology)}```\n{END_MARKER}"


def marked_section(text: str) -> tuple[int, int]:
    """(start, end) offsets of the marked block in `text`, markers included."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0:
        raise ValueError(f"markers {START_MARKER} ... {END_MARKER} not found")
    if end < start or text.count(START_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise ValueError(f"expected one {START_MARKER} before one {END_MARKER}")
    return start, end + len(END_MARKER)


def write_readme(topology: Topology, path: Path = README) -> bool:
    """Rewrite the marked block of `path` in place; True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = marked_section(text)
    updated = text[:start] + readme_section(topology) + text[end:]
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    from infra.topology import TOPOLOGY

    parser = argparse.ArgumentParser(prog="python -m infra.diagram", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="rewrite the marked section of the README in place")
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(readme_section(TOPOLOGY) + "\n")
        return 0
    try:
        changed = write_readme(TOPOLOGY, args.readme)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{args.readme}: {exc}\n")
        return 1
    sys.stdout.write(f"{args.readme}: {'updated' if changed else 'already up to date'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
