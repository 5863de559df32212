"""Chat turns through the real chat_turn function on a real database, with google-genai
talking to the Vertex AI stand-in: JSON and SSE replies, stored messages, idempotent retries,
the token quota, history folding, restrictions and model faults."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulators.vertex_standin import VertexStandin
from shared import clients, gemini, lifecycle
from shared.events import Envelope
from tests.integration.identity_fixtures import REPO, Identity


@pytest.fixture
def chat(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from functions_framework import create_app

    standin = VertexStandin().start()
    monkeypatch.setenv("GENAI_BASE_URL", standin.url)
    monkeypatch.setattr(gemini, "BACKOFF_BASE_S", 0.01)
    clients.reset()

    def app(name: str) -> Any:
        return create_app(name, str(REPO / f"functions/{name}/main.py")).test_client()

    account = identity.signup()
    who = identity.bearer(account)
    characters, conversations, turns = app("characters"), app("conversations"), app("chat_turn")
    character = characters.post("/characters", headers=who, json={
        "name": "Mina", "description": "A barista in a small cafe.",
        "greeting": "Welcome!", "visibility": "public"}).json
    conversation = conversations.post("/conversations", headers=who,
                                      json={"character_id": character["id"]}).json
    try:
        yield {"who": who, "account": account, "turns": turns, "conversations": conversations,
               "conversation": conversation["id"], "standin": standin}
    finally:
        standin.stop()


def _say(chat: dict[str, Any], text: str, **headers: str) -> Any:
    return chat["turns"].post(f"/conversations/{chat['conversation']}/turns",
                              headers=chat["who"] | headers, json={"message": text})


def _messages(chat: dict[str, Any]) -> list[tuple[str, str]]:
    page = chat["conversations"].get(f"/conversations/{chat['conversation']}/messages",
                                     headers=chat["who"], query_string={"limit": 100}).json
    return [(m["role"], m["content"]) for m in reversed(page["items"])]


def test_a_turn_is_answered_and_stored(identity: Identity, chat: dict[str, Any]) -> None:
    resp = _say(chat, "One latte, please.")
    assert resp.status_code == 201, resp.json
    assert resp.json["reply"]["content"].endswith("echo: One latte, please.")
    assert resp.json["usage"]["input_tokens"] > 0
    assert _messages(chat) == [("assistant", "Welcome!"), ("user", "One latte, please."),
                               ("assistant", resp.json["reply"]["content"])]
    sent = chat["standin"].requests[-1]["body"]
    assert sent["systemInstruction"]["parts"][0]["text"].startswith("You are Mina.")
    events = identity.sql("SELECT payload FROM outbox WHERE topic = 'chat.turns'")
    assert len(events) == 1 and b'"chat.turn_completed"' in bytes(events[0][0])
    quota = chat["turns"].get("/me/quota", headers=chat["who"]).json
    assert quota["used"] > 0 and quota["remaining"] == quota["limit"] - quota["used"]


def test_streamed_turn_sends_deltas_then_done(chat: dict[str, Any]) -> None:
    resp = _say(chat, "Tell me about your coffee beans today.",
                Accept="text/event-stream")
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    events = [(block.split("\n")[0].removeprefix("event: "),
               json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in resp.get_data(as_text=True).strip().split("\n\n")]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("delta") > 1
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    assert text == events[-1][1]["reply"]["content"]
    assert _messages(chat)[-1] == ("assistant", text)


def test_a_client_that_disconnects_mid_stream_still_gets_its_reply_stored(
        chat: dict[str, Any]) -> None:
    resp = chat["turns"].post(f"/conversations/{chat['conversation']}/turns",
                              headers=chat["who"] | {"Accept": "text/event-stream"},
                              json={"message": "Are you still there?"}, buffered=False)
    stream = resp.response
    next(iter(stream))  # the first delta arrives, then the client goes away
    resp.close()
    assert _messages(chat)[-1][1].endswith("echo: Are you still there?")


def test_retried_post_with_the_same_key_answers_the_same_once(chat: dict[str, Any]) -> None:
    key = str(uuid.uuid4())
    first = _say(chat, "Same again.", **{"Idempotency-Key": key})
    again = _say(chat, "Same again.", **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert sum(1 for role, text in _messages(chat) if text == "Same again.") == 1
    other = _say(chat, "Something else.", **{"Idempotency-Key": key})
    assert other.status_code == 422 and other.json["code"] == "idempotency_key_reused"


def test_quota_exhausted_is_429(chat: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_DAILY_TOKEN_QUOTA", "5")
    assert _say(chat, "First.").status_code == 201  # allowed while something remains
    spent = _say(chat, "Second.")
    assert spent.status_code == 429 and spent.json["code"] == "quota_exhausted"
    assert int(spent.headers["Retry-After"]) > 0 and spent.json["quota"]["remaining"] == 0


def test_old_turns_are_folded_into_the_summary(identity: Identity, chat: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_HISTORY_BUDGET_TOKENS", "260")
    for i in range(6):
        assert _say(chat, f"Turn number {i} with a little more text to take room.")\
            .status_code == 201
    ((summary, upto),) = identity.sql(
        "SELECT summary, summary_upto_seq FROM conversations WHERE id = :c",
        c=chat["conversation"])
    assert summary and upto > 0
    sent = chat["standin"].requests[-1]["body"]
    assert "## Story so far" in sent["systemInstruction"]["parts"][0]["text"]
    texts = json.dumps(sent["contents"])
    assert "Turn number 5" in texts and "Turn number 0" not in texts


def test_restricted_accounts_and_foreign_conversations(identity: Identity,
                                                       chat: dict[str, Any]) -> None:
    other = identity.bearer(identity.signup())
    resp = chat["turns"].post(f"/conversations/{chat['conversation']}/turns", headers=other,
                              json={"message": "hi"})
    assert resp.status_code == 404
    lifecycle.apply(Envelope("user.status_changed", {
        "user_id": chat["account"]["user_id"], "status": "inactive", "version": 1}))
    refused = _say(chat, "hello?")
    assert refused.status_code == 403 and refused.json["code"] == "conversations_read_only"


def test_model_faults_retry_then_503(chat: dict[str, Any]) -> None:
    chat["standin"].inject("429", count=2)
    assert _say(chat, "Retry me.").status_code == 201
    chat["standin"].inject("500", count=3)
    failed = _say(chat, "This one fails.")
    assert failed.status_code == 503 and failed.json["code"] == "model_unavailable"
    assert failed.headers["Retry-After"]
    assert not any(text == "This one fails." for _, text in _messages(chat))
    assert _say(chat, "   ").status_code == 422


def _conv(chat: dict[str, Any], path: str, method: str = "get") -> Any:
    return getattr(chat["conversations"], method)(
        f"/conversations/{chat['conversation']}{path}", headers=chat["who"])


def _turn(chat: dict[str, Any], path: str, **kw: Any) -> Any:
    return chat["turns"].post(f"/conversations/{chat['conversation']}{path}",
                              headers=chat["who"] | kw.pop("headers", {}), **kw)


def test_regenerate_keeps_the_old_reply_as_an_alternative(chat: dict[str, Any]) -> None:
    first = _say(chat, "Pick a cake for me.").json
    again = _turn(chat, "/regenerate")
    assert again.status_code == 201, again.json
    assert again.json["kind"] == "regenerate"
    assert again.json["user_message_id"] == first["user_message_id"]
    assert again.json["reply"]["id"] != first["reply"]["id"]
    # The prompt is the same turn again: the question once, the old reply not in it.
    sent = json.dumps(chat["standin"].requests[-1]["body"]["contents"])
    assert sent.count("Pick a cake for me.") == 1
    history = _messages(chat)
    assert [r for r, _ in history] == ["assistant", "user", "assistant"]
    listed = _conv(chat, "/messages").json["items"][0]
    assert listed["id"] == again.json["reply"]["id"] and listed["alternatives"] == 2
    alts = _conv(chat, f"/messages/{first['reply']['id']}/alternatives").json
    assert [m["id"] for m in alts["items"]] == [first["reply"]["id"], again.json["reply"]["id"]]
    assert alts["active_index"] == 1
    # Swiping back is a selection; reading alternatives changed nothing.
    chosen = _conv(chat, f"/messages/{first['reply']['id']}/select", "post")
    assert chosen.status_code == 200 and chosen.json["active_index"] == 0
    assert _conv(chat, "/messages").json["items"][0]["id"] == first["reply"]["id"]
    # The next turn continues from the selected reply.
    nxt = _say(chat, "Thanks!").json
    rows = _conv(chat, "/messages").json["items"]
    assert rows[2]["id"] == first["reply"]["id"] and rows[0]["id"] == nxt["reply"]["id"]


def test_a_turn_read_before_a_swipe_is_refused(chat: dict[str, Any]) -> None:
    """A swipe changes the active path, so it changes the conversation's version: a turn built
    on the path before it writes nothing."""
    from shared import chat as chat_domain
    from shared import db
    from shared.gemini import Reply

    first = _say(chat, "Pick a cake for me.").json
    assert _turn(chat, "/regenerate").status_code == 201
    with db.autocommit() as conn:
        before = chat_domain.load(conn, chat["account"]["user_id"], chat["conversation"])
    assert _conv(chat, f"/messages/{first['reply']['id']}/select", "post").status_code == 200
    reply = Reply(text="late", input_tokens=1, output_tokens=1, model="m", attempts=1)
    with db.autocommit() as conn:
        assert chat_domain.store(conn, before, "Stale", chat_domain.prepare(before, "Stale"),
                                 reply) is None
    assert "Stale" not in [t for _, t in _messages(chat)]


def test_edit_branches_and_select_restores_the_old_branch(chat: dict[str, Any]) -> None:
    one = _say(chat, "I'd like tea.").json
    _say(chat, "With milk.")
    edited = _turn(chat, f"/messages/{one['user_message_id']}/edit",
                   json={"message": "I'd like coffee."})
    assert edited.status_code == 201, edited.json
    assert edited.json["kind"] == "edit"
    sent = json.dumps(chat["standin"].requests[-1]["body"]["contents"])
    assert "I'd like coffee." in sent and "tea" not in sent and "With milk." not in sent
    assert [t for r, t in _messages(chat) if r == "user"] == ["I'd like coffee."]
    # Selecting the original user message brings back its whole continuation.
    restored = _conv(chat, f"/messages/{one['user_message_id']}/select", "post")
    assert restored.status_code == 200
    assert [t for r, t in _messages(chat) if r == "user"] == ["I'd like tea.", "With milk."]
    # Only a user message on the active path can be edited; a reply cannot.
    refused = _turn(chat, f"/messages/{one['reply']['id']}/edit", json={"message": "x"})
    assert refused.status_code == 409 and refused.json["code"] == "message_not_editable"
    inactive = _turn(chat, f"/messages/{edited.json['user_message_id']}/edit",
                     json={"message": "x"})
    assert inactive.status_code == 409
    missing = _turn(chat, f"/messages/{uuid.uuid4()}/edit", json={"message": "x"})
    assert missing.status_code == 404 and missing.json["code"] == "message_not_found"
    # A reply deep in an inactive branch has no active sibling: select its ancestor first.
    deep = _conv(chat, f"/messages/{edited.json['reply']['id']}/select", "post")
    assert deep.status_code == 409 and deep.json["code"] == "not_on_active_path"


def test_regenerate_needs_a_reply_to_regenerate(chat: dict[str, Any]) -> None:
    refused = _turn(chat, "/regenerate")  # only the greeting so far
    assert refused.status_code == 409 and refused.json["code"] == "nothing_to_regenerate"


def test_alternate_greetings_can_be_swiped_before_the_first_turn(
        identity: Identity, chat: dict[str, Any]) -> None:
    from functions_framework import create_app

    characters = create_app("characters", str(REPO / "functions/characters/main.py"))
    character = characters.test_client().post("/characters", headers=chat["who"], json={
        "name": "Ada", "greeting": "Hello.", "alternate_greetings": ["Hi there.", "Hey."],
        "visibility": "private"}).json
    conversation = chat["conversations"].post("/conversations", headers=chat["who"],
                                              json={"character_id": character["id"]}).json
    chat = chat | {"conversation": conversation["id"]}
    (greeting,) = _conv(chat, "/messages").json["items"]
    assert greeting["content"] == "Hello." and greeting["alternatives"] == 3
    alts = _conv(chat, f"/messages/{greeting['id']}/alternatives").json
    _conv(chat, f"/messages/{alts['items'][2]['id']}/select", "post")
    assert _messages(chat) == [("assistant", "Hey.")]
    _say(chat, "Hey yourself.")
    sent = json.dumps(chat["standin"].requests[-1]["body"]["contents"])
    assert "Hey." in sent and "Hello." not in sent


def test_an_edit_inside_the_summarized_part_drops_the_summary(
        identity: Identity, chat: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_HISTORY_BUDGET_TOKENS", "260")
    first = _say(chat, "Turn number 0 with a little more text to take room.").json
    for i in range(1, 6):
        _say(chat, f"Turn number {i} with a little more text to take room.")
    ((upto,),) = identity.sql("SELECT summary_upto_seq FROM conversations WHERE id = :c",
                              c=chat["conversation"])
    assert upto > 0
    monkeypatch.setenv("CHAT_HISTORY_BUDGET_TOKENS", "6000")
    edited = _turn(chat, f"/messages/{first['user_message_id']}/edit",
                   json={"message": "A different start."})
    assert edited.status_code == 201
    system = chat["standin"].requests[-1]["body"]["systemInstruction"]["parts"][0]["text"]
    assert "## Story so far" not in system
    assert identity.sql("SELECT summary_upto_seq FROM conversations WHERE id = :c",
                        c=chat["conversation"]) == [(0,)]


def test_concurrent_turns_on_one_conversation_store_one_branch(identity: Identity,
                                                              chat: dict[str, Any]) -> None:
    """Two turns read the same version. The second one's statement waits for the first one's
    row lock, re-checks the version after it commits and writes nothing but its usage, so the
    active path stays one chain."""
    from shared import chat as chat_domain
    from shared import db
    from shared.gemini import Reply

    user = chat["account"]["user_id"]
    with db.autocommit() as conn:
        a = chat_domain.load(conn, user, chat["conversation"])
        b = chat_domain.load(conn, user, chat["conversation"])
    reply = Reply(text="ok", input_tokens=3, output_tokens=1, model="m", attempts=1)
    outcome: dict[str, Any] = {}

    def second() -> None:
        with db.autocommit() as conn:
            outcome["b"] = chat_domain.store(conn, b, "B", chat_domain.prepare(b, "B"), reply)

    with db.transaction() as conn:  # the first turn's statement, not committed yet
        assert chat_domain.store(conn, a, "A", chat_domain.prepare(a, "A"), reply) is not None
        racing = threading.Thread(target=second)
        racing.start()
        racing.join(timeout=0.5)
        assert racing.is_alive()  # waiting for the row lock
    racing.join(timeout=10)
    assert outcome["b"] is None
    assert [t for r, t in _messages(chat) if r == "user"] == ["A"]
    assert identity.sql("SELECT tokens FROM token_usage WHERE user_id = CAST(:u AS uuid)",
                        u=user) == [(8,)]  # both turns' tokens were spent


def test_a_turn_is_traced_with_model_latency_and_tokens(chat: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import tracing
    from tests.otlp import Receiver, attributes

    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    tracing.reset()
    try:
        resp = _say(chat, "Trace me.")
        tracing.flush()
    finally:
        tracing.reset()
        receiver.server.shutdown()
    spans = {s.name: s for s in receiver.spans()}
    server = spans["POST /conversations/{conversation_id}/turns"]
    model = spans["chat gemini-2.5-flash"]
    assert server.trace_id.hex() == resp.headers["X-Trace-Id"]
    assert model.parent_span_id == server.span_id
    attrs = attributes(model)
    assert attrs["gen_ai.usage.input_tokens"] == {
        "intValue": str(resp.json["usage"]["input_tokens"])}
    assert attrs["gen_ai.usage.output_tokens"]["intValue"] == str(
        resp.json["usage"]["output_tokens"])
    assert attrs["gen_ai.request.model"] == {"stringValue": "gemini-2.5-flash"}
    assert model.end_time_unix_nano > model.start_time_unix_nano
    assert attributes(server)["app.chat.kind"] == {"stringValue": "turn"}
