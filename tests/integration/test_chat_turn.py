"""Chat turns through the real chat_turn function on a real database, with google-genai
talking to the Vertex AI stand-in: JSON and SSE replies, stored messages, idempotent retries,
the token quota, history folding, restrictions and model faults."""

from __future__ import annotations

import json
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
