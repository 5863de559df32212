"""chat_turn: one turn of a conversation with Gemini, as JSON or as Server-Sent Events
(`Accept: text/event-stream`), plus `GET /me/quota`. A client that disconnects mid-stream does
not lose the reply: it is stored when complete and can be read from the conversation."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import flask
import functions_framework

from shared import context, errors, tracing
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router, json_response
from shared.validation import Field, Schema

init()
log = logging.getLogger("chat_turn")
TURN = Schema({"message": Field("string", required=True, min_length=1, max_length=8000)})

app = Router("chat_turn", authenticate=authenticate, rate_limited=True)


@app.route("POST", "/conversations/{conversation_id}/turns", role="user", body=TURN,
           summary="Send a message; get the character's reply (JSON or SSE)")
def turn(call: Call) -> Any:
    from shared import chat

    message = _message(call)
    return _run(call, {"message": message},
                lambda conn, user, conversation: (chat.load(conn, user, conversation), message))


@app.route("POST", "/conversations/{conversation_id}/messages/{message_id}/edit", role="user",
           body=TURN, summary="Edit a user message; the conversation branches from there")
def edit(call: Call) -> Any:
    from shared import chat

    message = _message(call)
    message_id = parse_uuid(call.params["message_id"], "message")
    return _run(call, {"edit": message_id, "message": message},
                lambda conn, user, conversation: (
                    chat.load_edit(conn, user, conversation, message_id), message))


@app.route("POST", "/conversations/{conversation_id}/regenerate", role="user",
           summary="A new reply to the last message, kept beside the old one")
def regenerate(call: Call) -> Any:
    from shared import chat

    return _run(call, {"regenerate": True}, chat.load_regenerate)


def _message(call: Call) -> str:
    message = str((call.body or {})["message"]).strip()
    if not message:
        raise errors.ValidationFailed("message must not be blank", errors=[
            {"field": "message", "message": "must not be blank"}])
    return message


Loader = Callable[[Any, str, str], tuple[Any, str]]


def _run(call: Call, request: dict[str, Any], loader: Loader) -> Any:
    """Every kind of turn: idempotency, checks, the prompt, then the model as JSON or SSE."""
    from shared import chat, db, idempotency

    user = call.principal.subject
    conversation_id = parse_uuid(call.params["conversation_id"], "conversation")
    key = call.request.headers.get("Idempotency-Key")
    scope = f"chat_turn:{user}"
    if key is not None:
        stored = idempotency.begin(scope, key, idempotency.request_hash(
            {"conversation": conversation_id, **request}))
        if stored is not None:
            return json_response(stored.body, stored.status, {"Idempotent-Replayed": "true"})
    try:
        # Reads only: the store re-checks the conversation version in its own statement.
        with db.autocommit() as conn:
            ctx, message = loader(conn, user, conversation_id)
        chat.require_quota(ctx)
        if (span := tracing.current_span()) is not None:
            span.set(**{"app.chat.kind": ctx.branch.kind, "app.conversation.id": conversation_id,
                        "app.character.id": ctx.character_id})
        prepared = chat.prepare(ctx, message)
        if "text/event-stream" in call.request.headers.get("Accept", ""):
            return _stream(ctx, message, prepared, key, scope)
        return _complete(ctx, message, prepared, key, scope), 201
    except BaseException:
        if key is not None:
            idempotency.abandon(scope, key)
        raise


def _complete(ctx: Any, message: str, prepared: Any, key: str | None, scope: str
              ) -> dict[str, Any]:
    from shared import gemini

    started = time.perf_counter()
    reply = gemini.generate(prepared.prompt.system_instruction, prepared.prompt.contents,
                            ctx.safety_level)
    model_s = time.perf_counter() - started
    body = _store(ctx, message, prepared, reply, key, scope)
    _log_turn(ctx, reply, model_s, streamed=False)
    return body


def _store(ctx: Any, message: str, prepared: Any, reply: Any, key: str | None, scope: str
           ) -> dict[str, Any]:
    from shared import chat, db, outbox

    with db.autocommit() as conn:  # one statement: its own transaction
        stored = chat.store(conn, ctx, message, prepared, reply,
                            (scope, key) if key is not None else None)
    if stored is None:
        raise errors.Conflict("the conversation changed while this reply was written; "
                              "read it again and retry", code="conversation_changed")
    body, event = stored
    # The turn's event is sent at once but its confirmation is not awaited: the reply does not
    # wait a Pub/Sub round trip, and the relay re-sends anything left unconfirmed.
    outbox.publish_after_commit([event], wait=False)
    return body


def _log_turn(ctx: Any, reply: Any, seconds: float, streamed: bool) -> None:
    log.info("chat turn completed", extra={"turn": {
        "conversationId": ctx.conversation_id, "model": reply.model, "attempts": reply.attempts,
        "modelLatencyMs": round(seconds * 1000, 1), "inputTokens": reply.input_tokens,
        "outputTokens": reply.output_tokens, "streamed": streamed, "kind": ctx.branch.kind,
        "outcome": "ok"}})


def _sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def _stream(ctx: Any, message: str, prepared: Any, key: str | None, scope: str
            ) -> flask.Response:
    """Deltas as they come; then `done` with the stored message ids and usage. The model is
    read as the response is written, in the request's thread. A client that goes away ends the
    response early (gunicorn closes it); the turn then runs to its end inside that close, so
    the reply is still stored, and the request stays open (CPU allocated) meanwhile."""
    from shared import gemini, idempotency

    gemini.check_breaker(gemini_model())  # a clean 503 before any byte is sent
    trace = context.current()
    run = contextvars.copy_context().run  # the request's trace, for logs and spans

    def events() -> Iterator[tuple[str, Any]]:
        started = time.perf_counter()
        try:
            reply = None
            for item in gemini.stream(prepared.prompt.system_instruction,
                                      prepared.prompt.contents, ctx.safety_level):
                if isinstance(item, str):
                    yield "delta", {"text": item}
                else:
                    reply = item
            assert reply is not None  # stream() always ends with the Reply
            model_s = time.perf_counter() - started
            body = _store(ctx, message, prepared, reply, key, scope)
            _log_turn(ctx, reply, model_s, streamed=True)
            yield "done", body
        except errors.AppError as exc:
            if key is not None:
                idempotency.abandon(scope, key)
            yield "error", errors.problem(exc, trace.trace_id if trace else None)
        except Exception:
            log.exception("streamed turn failed")
            if key is not None:
                idempotency.abandon(scope, key)
            yield "error", errors.problem(errors.AppError(), trace.trace_id if trace else None)

    def body() -> Iterator[str]:
        turn = events()
        try:
            while (item := run(next, turn, None)) is not None:
                yield _sse(*item)
        except GeneratorExit:
            log.info("client left mid-stream; finishing the turn")
            while run(next, turn, None) is not None:
                pass
            raise

    return flask.Response(body(), mimetype="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def gemini_model() -> str:
    from shared.config import get_settings

    return get_settings().genai_model


@app.route("GET", "/me/quota", role="user", summary="Today's chat token quota")
def my_quota(call: Call) -> dict[str, Any]:
    from shared import chat, db

    with db.transaction() as conn:
        return chat.quota(conn, call.principal.subject)


@functions_framework.http
def chat_turn(request: flask.Request) -> flask.Response:
    return app(request)
