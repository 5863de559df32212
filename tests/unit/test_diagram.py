"""The README's topology diagram is generated from the manifest and kept current; the diagram
shows every element of the manifest with valid, unique Mermaid node ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import diagram
from infra.diagram import END_MARKER, START_MARKER, marked_section, mermaid, readme_section
from infra.topology import (
    TOPOLOGY,
    Bucket,
    Function,
    Schedule,
    Subscription,
    Topic,
    Topology,
    Trigger,
)

README = Path(__file__).resolve().parents[2] / "README.md"
VALID_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NODE = re.compile(r'^    (?P<id>[^\s(\[{]+)(?:\(\(|\(\[|\[\(|\{\{|\[)"(?P<label>[^"]*)"'
                  r"(?:\)\)|\]\)|\)\]|\}\}|\]):::(?P<kind>\w+)$")
EDGE = re.compile(r'^    (?P<source>\S+) (?P<arrow>-->|-\.->)(?:\|"(?P<label>[^"]*)"\|)? '
                  r"(?P<target>\S+)$")


@dataclass(frozen=True)
class Parsed:
    nodes: list[tuple[str, str, list[str]]]  # (id, kind, label lines), in order
    edges: list[tuple[str, str, str, bool]]  # (source, target, label, dotted)

    def ids(self, *kinds: str) -> dict[str, str]:
        """First label line (the manifest name) -> node id, for nodes of these kinds."""
        return {label[0]: node_id for node_id, kind, label in self.nodes if kind in kinds}


def parse(text: str) -> Parsed:
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes, edges = [], []
    for line in lines[1:]:
        if line.lstrip().startswith(("%%", "classDef ")):
            continue
        if node := NODE.match(line):
            nodes.append((node["id"], node["kind"], node["label"].split("<br/>")))
        elif edge := EDGE.match(line):
            edges.append((edge["source"], edge["target"], edge["label"] or "",
                          edge["arrow"] == "-.->"))
        else:
            pytest.fail(f"unrecognised diagram line: {line!r}")
    return Parsed(nodes, edges)


@pytest.fixture(scope="module")
def parsed() -> Parsed:
    return parse(mermaid(TOPOLOGY))


def test_readme_section_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    try:
        start, end = marked_section(text)
    except ValueError as exc:
        pytest.fail(f"README.md: {exc}; add them under `## Topology`, then run "
                    f"`python -m infra.diagram --write`")
    assert text[start:end] == readme_section(TOPOLOGY), (
        "README.md's topology diagram is out of date: run `python -m infra.diagram --write`")


def test_every_manifest_element_is_a_node(parsed: Parsed) -> None:
    assert list(parsed.ids("fn")) == [f.name for f in TOPOLOGY.functions]
    assert list(parsed.ids("topic", "dlq")) == [t.name for t in TOPOLOGY.topics]
    assert list(parsed.ids("schedule")) == [s.name for s in TOPOLOGY.schedules]
    assert list(parsed.ids("bucket")) == [b.name for b in TOPOLOGY.buckets]
    schedules = {label[0]: label for _, kind, label in parsed.nodes if kind == "schedule"}
    for schedule in TOPOLOGY.schedules:
        assert schedules[schedule.name] == [schedule.name, schedule.cron, schedule.time_zone]


def test_node_ids_are_unique_and_valid_and_edges_join_nodes(parsed: Parsed) -> None:
    ids = [node_id for node_id, _, _ in parsed.nodes]
    assert len(ids) == len(set(ids)), f"duplicate node ids: {ids}"
    for node_id in ids:
        assert VALID_ID.match(node_id), node_id
    for source, target, _, _ in parsed.edges:
        assert source in ids and target in ids, (source, target)


def test_every_manifest_wire_is_an_edge(parsed: Parsed) -> None:
    fn, topic = parsed.ids("fn"), parsed.ids("topic", "dlq")
    edges = set(parsed.edges)
    labels = {node_id: label for node_id, _, label in parsed.nodes}
    for function in TOPOLOGY.functions:
        if function.trigger is Trigger.HTTP:
            assert labels[fn[function.name]][1] == ("HTTP" if function.public
                                                    else "HTTP, private")
            assert (("clients", fn[function.name], "", False) in edges) is function.public
        for name in function.publishes:
            assert (fn[function.name], topic[name], "", False) in edges
    for schedule in TOPOLOGY.schedules:
        assert (parsed.ids("schedule")[schedule.name], topic[schedule.topic], "", False) in edges
    for bucket in TOPOLOGY.buckets:
        if bucket.notification_topic:
            assert (parsed.ids("bucket")[bucket.name], topic[bucket.notification_topic],
                    ", ".join(bucket.notification_events), False) in edges
    for sub in TOPOLOGY.subscriptions:
        assert (topic[sub.topic], fn[sub.function], sub.name, False) in edges
        if sub.dead_letter_topic:
            assert (fn[sub.function], topic[sub.dead_letter_topic],
                    f"DLQ: {sub.name}, {sub.max_delivery_attempts} attempts", True) in edges


SMALL = Topology(
    functions=(
        Function("api", Trigger.HTTP, "api", public=True, publishes=("orders.created",)),
        Function("admin-api", Trigger.HTTP, "admin_api"),
        Function("worker", Trigger.TOPIC, "worker"),
        Function("nightly", Trigger.SCHEDULE, "nightly"),
    ),
    topics=(
        Topic("orders.created"),
        Topic("files.in", external=True),
        Topic("nightly.tick", external=True),
        Topic("dead-letter", external=True),
    ),
    subscriptions=(
        Subscription("worker.orders", "orders.created", "worker",
                     dead_letter_topic="dead-letter", max_delivery_attempts=7),
        Subscription("worker.files", "files.in", "worker", dead_letter_topic="dead-letter"),
        Subscription("nightly.tick", "nightly.tick", "nightly"),
    ),
    schedules=(Schedule("nightly-run", cron="0 2 * * *", topic="nightly.tick",
                        time_zone="Europe/Paris"),),
    buckets=(Bucket("inbox", notification_topic="files.in"), Bucket("archive")),
)

SMALL_MERMAID = """\
flowchart LR
    %% Generated from infra/topology.py by `python -m infra.diagram --write`; do not edit.
    clients(("clients")):::client
    fn_api["api<br/>HTTP"]:::fn
    fn_admin_api["admin-api<br/>HTTP, private"]:::fn
    fn_worker["worker<br/>Pub/Sub push"]:::fn
    fn_nightly["nightly<br/>scheduled"]:::fn
    topic_orders_created(["orders.created"]):::topic
    topic_files_in(["files.in"]):::topic
    topic_nightly_tick(["nightly.tick"]):::topic
    topic_dead_letter(["dead-letter"]):::dlq
    schedule_nightly_run{{"nightly-run<br/>0 2 * * *<br/>Europe/Paris"}}:::schedule
    bucket_inbox[("inbox")]:::bucket
    bucket_archive[("archive")]:::bucket
    clients --> fn_api
    schedule_nightly_run --> topic_nightly_tick
    bucket_inbox -->|"OBJECT_FINALIZE"| topic_files_in
    topic_orders_created -->|"worker.orders"| fn_worker
    fn_worker -.->|"DLQ: worker.orders, 7 attempts"| topic_dead_letter
    topic_files_in -->|"worker.files"| fn_worker
    fn_worker -.->|"DLQ: worker.files, 5 attempts"| topic_dead_letter
    topic_nightly_tick -->|"nightly.tick"| fn_nightly
    fn_api --> topic_orders_created
    classDef client fill:#f5f5f5,stroke:#616161,color:#212121
    classDef fn fill:#e3f2fd,stroke:#1565c0,color:#0d47a1
    classDef topic fill:#fff8e1,stroke:#f9a825,color:#5d4037
    classDef dlq fill:#ffebee,stroke:#c62828,color:#b71c1c
    classDef schedule fill:#f3e5f5,stroke:#6a1b9a,color:#4a148c
    classDef bucket fill:#e8f5e9,stroke:#2e7d32,color:#1b5e20
"""


def test_golden_small_topology() -> None:
    assert mermaid(SMALL) == SMALL_MERMAID
    assert readme_section(SMALL) == (
        f"{START_MARKER}\n```mermaid\n{SMALL_MERMAID}```\n{END_MARKER}")


def test_colliding_names_get_distinct_ids_and_labels_are_escaped() -> None:
    topology = Topology(
        functions=(Function('odd"name', Trigger.HTTP, "x", publishes=("a.b", "a-b", "a_b")),),
        topics=(Topic("a.b"), Topic("a-b"), Topic("a_b")),
        subscriptions=(), schedules=(Schedule("1st", cron="0 0 * * 1#2", topic="a.b"),),
        buckets=(),
    )
    text = mermaid(topology)
    parsed = parse(text)
    ids = [node_id for node_id, _, _ in parsed.nodes]
    assert ids == ["fn_odd_name", "topic_a_b", "topic_a_b_2", "topic_a_b_3", "schedule_1st"]
    assert all(VALID_ID.match(node_id) for node_id in ids)
    assert 'fn_odd_name["odd#quot;name<br/>HTTP, private"]:::fn' in text
    assert "0 0 * * 1#35;2" in text
    assert "clients" not in ids  # no public function, no clients node


def test_an_undeclared_reference_is_an_error() -> None:
    topology = Topology(functions=(Function("f", Trigger.HTTP, "f", publishes=("nowhere",)),),
                        topics=(), subscriptions=(), schedules=(), buckets=())
    with pytest.raises(ValueError, match="function 'f' refers to topic 'nowhere'"):
        mermaid(topology)


def test_cli_prints_the_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert diagram.main([]) == 0
    assert capsys.readouterr().out == readme_section(TOPOLOGY) + "\n"


def test_cli_write_rewrites_only_the_marked_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{START_MARKER}\nstale\n{END_MARKER}\n\n## After\n")
    assert diagram.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == f"# Title\n\n{readme_section(TOPOLOGY)}\n\n## After\n"
    assert "updated" in capsys.readouterr().out
    assert diagram.main(["--write", "--readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_cli_write_without_markers_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    assert diagram.main(["--write", "--readme", str(readme)]) == 1
    assert "not found" in capsys.readouterr().err
    assert readme.read_text() == "# Title\n"
