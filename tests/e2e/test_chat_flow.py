"""Chat on the local stack, over HTTP through the gateway, with the Vertex AI stand-in: a whole
conversation, a client leaving mid-stream, branches, the summary under the stack's small history
budget, the quota, and model faults up to the breaker's clean 503.

The e2e stack runs with a small quota, history budget, model timeout and breaker cool-down
(see tests/e2e/conftest.py), so those paths are reachable in a few turns."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.conftest import E2E_SETTINGS

pytestmark = pytest.mark.e2e


class Chat:
    """One user and one conversation with a fresh character."""

    def __init__(self, stack: dict[str, Any], greeting: str = "Welcome!") -> None:
        self.base = stack["gateway_url"]
        self.standin = stack["vertex_ai_url"]
        signup = requests.post(self.url("auth", "/signup"), timeout=10, json={
            "email": f"chat-flow-{uuid.uuid4().hex[:10]}@example.com",
            "password": "a long and unusual passphrase", "display_name": "Flow"})
        assert signup.status_code == 201, signup.text
        self.auth = {"Authorization": f"Bearer {signup.json()['access_token']}",
                     "X-Forwarded-For": f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
        character = requests.post(self.url("characters", "/characters"), headers=self.auth,
                                  timeout=10, json={"name": "Mina", "greeting": greeting,
                                                    "description": "A barista."}).json()
        self.conversation = requests.post(
            self.url("conversations", "/conversations"), headers=self.auth, timeout=10,
            json={"character_id": character["id"]}).json()["id"]

    def url(self, function: str, path: str) -> str:
        return f"{self.base}/{function}{path}"

    def say(self, text: str, **headers: str) -> requests.Response:
        return requests.post(self.url("chat_turn", f"/conversations/{self.conversation}/turns"),
                             headers=self.auth | headers, json={"message": text}, timeout=60)

    def post(self, function: str, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url(function, f"/conversations/{self.conversation}{path}"),
                             headers=self.auth, timeout=60, **kw)

    def messages(self) -> list[dict[str, Any]]:
        page = requests.get(self.url("conversations",
                                     f"/conversations/{self.conversation}/messages"),
                            headers=self.auth, params={"limit": 100}, timeout=10).json()
        return list(reversed(page["items"]))

    def fault(self, fault: str, count: int, **extra: Any) -> None:
        resp = requests.post(f"{self.standin}/__standin/faults", timeout=5,
                             json={"fault": fault, "count": count, **extra})
        assert resp.status_code == 200, resp.text

    def model_requests(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.standin}/__standin/requests",
                                 timeout=5).json()["requests"])


def test_a_whole_conversation(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    for text in ("Hello!", "One latte, please.", "Thanks, bye."):
        resp = chat.say(text)
        assert resp.status_code == 201, resp.text
        assert resp.json()["reply"]["content"].endswith(f"echo: {text}")
    assert [(m["role"], m["content"].split("echo: ")[-1]) for m in chat.messages()] == [
        ("assistant", "Welcome!"), ("user", "Hello!"), ("assistant", "Hello!"),
        ("user", "One latte, please."), ("assistant", "One latte, please."),
        ("user", "Thanks, bye."), ("assistant", "Thanks, bye.")]
    # The persona comes first: the system instruction starts with who the character is.
    sent = chat.model_requests()[-1]["body"]
    assert sent["systemInstruction"]["parts"][0]["text"].startswith("You are Mina.")


def test_a_client_leaving_mid_stream_still_gets_the_reply_stored(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    target = urlsplit(chat.url("chat_turn", f"/conversations/{chat.conversation}/turns"))
    conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
    conn.request("POST", target.path, body=json.dumps({"message": "Stream and leave"}),
                 headers=chat.auth | {"Accept": "text/event-stream",
                                      "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read(6) == b"event:"  # the first event started; then the client is gone
    conn.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        contents = [m["content"] for m in chat.messages()]
        if any(c.endswith("echo: Stream and leave") for c in contents):
            break
        time.sleep(0.2)
    assert contents[-2:] == ["Stream and leave", contents[-1]]
    assert contents[-1].endswith("echo: Stream and leave")


def test_regenerate_edit_and_swipe(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    first = chat.say("Tea, please.").json()
    chat.say("With milk.")
    regenerated = chat.post("chat_turn", "/regenerate")
    assert regenerated.status_code == 201, regenerated.text
    assert regenerated.json()["kind"] == "regenerate"
    assert chat.messages()[-1]["alternatives"] == 2
    edited = chat.post("chat_turn", f"/messages/{first['user_message_id']}/edit",
                       json={"message": "Coffee, please."})
    assert edited.status_code == 201, edited.text
    assert [m["content"] for m in chat.messages() if m["role"] == "user"] == [
        "Coffee, please."]
    alternatives = requests.get(
        chat.url("conversations", f"/conversations/{chat.conversation}/messages/"
                                  f"{first['user_message_id']}/alternatives"),
        headers=chat.auth, timeout=10).json()
    assert [m["content"] for m in alternatives["items"]] == ["Tea, please.", "Coffee, please."]
    assert alternatives["active_index"] == 1
    back = chat.post("conversations", f"/messages/{first['user_message_id']}/select")
    assert back.status_code == 200 and back.json()["active_index"] == 0
    assert [m["content"] for m in chat.messages() if m["role"] == "user"] == [
        "Tea, please.", "With milk."]


def test_old_turns_fold_into_a_summary_under_the_budget(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    budget = int(E2E_SETTINGS["CHAT_HISTORY_BUDGET_TOKENS"])
    for i in range(8):
        resp = chat.say(f"Message {i}: " + "the espresso here is lovely " * 6)
        assert resp.status_code == 201, resp.text
    usage = resp.json()["usage"]
    sent = chat.model_requests()[-1]["body"]
    assert "## Story so far" in sent["systemInstruction"]["parts"][0]["text"]
    history = json.dumps(sent["contents"])
    assert "Message 7" in history and "Message 0" not in history
    assert len(history) // 4 < budget * 2  # the window, not the whole conversation
    # Folding is paid for by the user like the turn itself.
    assert usage["summary_tokens"] >= 0
    assert len(chat.messages()) == 17  # nothing was deleted: folding is only for the prompt


def test_quota_is_spent_then_429_with_what_is_left(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    quota = int(E2E_SETTINGS["CHAT_DAILY_TOKEN_QUOTA"])
    spent = None
    for _ in range(60):
        resp = chat.say("Tell me everything about coffee. " * 100)
        if resp.status_code == 429:
            spent = resp
            break
        assert resp.status_code == 201, resp.text
    assert spent is not None, "the quota was never spent"
    assert spent.headers["Content-Type"].startswith("application/problem+json")
    assert spent.json()["code"] == "quota_exhausted" and int(spent.headers["Retry-After"]) > 0
    left = requests.get(chat.url("chat_turn", "/me/quota"), headers=chat.auth, timeout=10).json()
    assert left["limit"] == quota and left["remaining"] == 0 and left["used"] >= quota


def test_model_faults_retry_then_break_with_a_clean_503(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    requests.delete(f"{chat.standin}/__standin/faults", timeout=5)
    # A burst of 429s and a 500 are absorbed by the retries.
    chat.fault("429", 2)
    assert chat.say("Through a 429 burst").status_code == 201
    chat.fault("500", 1)
    assert chat.say("Through a 500").status_code == 201
    # A slow model: the first attempt times out, the retry answers.
    chat.fault("slow", 1, slow_s=float(E2E_SETTINGS["GENAI_TIMEOUT_S"]) + 1)
    slow = chat.say("Through a slow call")
    assert slow.status_code == 201 and slow.json()["usage"]["attempts"] == 2
    # A failing model: each turn is 503 after its retries; after five failed turns in a row
    # the breaker opens and turns are refused at once, without calling the model.
    chat.fault("500", 30)
    failures = [chat.say(f"Failing {i}") for i in range(5)]
    assert all(r.status_code == 503 for r in failures)
    assert failures[0].json()["code"] == "model_unavailable"
    calls_before = len(chat.model_requests())
    refused = chat.say("Breaker open")
    assert refused.status_code == 503 and refused.json()["code"] == "model_circuit_open"
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert 1 <= int(refused.headers["Retry-After"]) <= int(
        float(E2E_SETTINGS["GENAI_BREAKER_COOLDOWN_S"])) + 1
    assert len(chat.model_requests()) == calls_before
    stream = chat.say("Breaker open, streamed", Accept="text/event-stream")
    assert stream.status_code == 503 and stream.json()["code"] == "model_circuit_open"
    # Nothing of the failed turns was stored.
    assert not any(m["content"].startswith(("Failing", "Breaker")) for m in chat.messages())
    # After the cool-down, a healthy model closes the breaker again.
    requests.delete(f"{chat.standin}/__standin/faults", timeout=5)
    time.sleep(float(E2E_SETTINGS["GENAI_BREAKER_COOLDOWN_S"]) + 0.5)
    assert chat.say("Healthy again").status_code == 201


def test_a_retried_post_with_the_same_key_is_the_same_turn(stack: dict[str, Any]) -> None:
    chat = Chat(stack)
    key = str(uuid.uuid4())
    first = chat.say("Only once, please.", **{"Idempotency-Key": key})
    again = chat.say("Only once, please.", **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert [m["content"] for m in chat.messages()].count("Only once, please.") == 1
    reused = chat.say("Something else.", **{"Idempotency-Key": key})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
