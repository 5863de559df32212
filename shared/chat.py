"""A chat turn: the user's message, the character's reply from Gemini, stored together.

The prompt puts the persona first (a stable prefix Gemini can cache), then the running summary,
then the newest history that fits the token budget; turns that fall out of the window are
folded into the summary by the model instead of being dropped silently. Usage from Gemini's
`usageMetadata` counts against a per-user daily token quota. The reply, the user's message, the
usage and `chat.turn_completed` commit in one transaction (outbox).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import errors, gemini, lifecycle, prompt
from shared.events import Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

CHAT_TOPIC = "chat.turns"
DEFAULT_DAILY_QUOTA = 200_000
DEFAULT_HISTORY_BUDGET = 6_000


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def daily_quota() -> int:
    return int(os.environ.get("CHAT_DAILY_TOKEN_QUOTA", DEFAULT_DAILY_QUOTA))


def quota(conn: Connection, user_id: str) -> dict[str, Any]:
    """Today's token use (UTC days) against the quota."""
    used = int(conn.execute(_sql(
        "SELECT coalesce(sum(tokens), 0) FROM token_usage WHERE user_id = CAST(:u AS uuid) "
        "AND day = (now() AT TIME ZONE 'UTC')::date"), {"u": user_id}).scalar_one())
    limit = daily_quota()
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                               microsecond=0)
    return {"limit": limit, "used": used, "remaining": max(0, limit - used),
            "resets_at": midnight.isoformat()}


def require_quota(conn: Connection, user_id: str) -> None:
    state = quota(conn, user_id)
    if state["remaining"] <= 0:
        wait = int((datetime.fromisoformat(state["resets_at"]) - datetime.now(UTC))
                   .total_seconds()) + 1
        raise errors.TooManyRequests("today's chat token quota is spent", code="quota_exhausted",
                                     headers={"Retry-After": str(wait)}, quota=state)


@dataclass(frozen=True)
class TurnContext:
    user_id: str
    user_name: str
    conversation_id: str
    character_id: str
    persona: prompt.Persona
    safety_level: str
    summary: str
    history: tuple[prompt.Turn, ...]
    seqs: tuple[int, ...]  # seq of each history turn


def load(conn: Connection, user_id: str, conversation_id: str) -> TurnContext:
    """The conversation (the caller's own), its character and the unsummarized history."""
    lifecycle.require_can_chat(conn, user_id)
    row = conn.execute(_sql(
        "SELECT c.summary, c.summary_upto_seq, ch.id, ch.name, ch.description, ch.personality, "
        "ch.scenario, ch.system_prompt, ch.example_dialogue, ch.post_history_instructions, "
        "ch.safety_level, u.display_name FROM conversations c "
        "JOIN characters ch ON ch.id = c.character_id JOIN users u ON u.id = c.user_id "
        "WHERE c.id = CAST(:c AS uuid) AND c.user_id = CAST(:u AS uuid) "
        "AND c.deleted_at IS NULL"), {"c": conversation_id, "u": user_id}).first()
    if row is None:
        raise errors.NotFound("no such conversation", code="conversation_not_found")
    messages = conn.execute(_sql(
        "SELECT id, role, content, seq FROM messages WHERE conversation_id = CAST(:c AS uuid) "
        "AND active AND role IN ('user', 'assistant') AND seq > :upto ORDER BY seq"),
        {"c": conversation_id, "upto": row[1]}).all()
    persona = prompt.Persona(name=row[3], description=row[4], personality=row[5],
                             scenario=row[6], system_prompt=row[7], example_dialogue=row[8],
                             post_history_instructions=row[9])
    return TurnContext(user_id, row[11], conversation_id, str(row[2]), persona, row[10],
                       row[0], tuple(prompt.Turn(str(m[0]), m[1], m[2]) for m in messages),
                       tuple(int(m[3]) for m in messages))


@dataclass(frozen=True)
class Prepared:
    prompt: prompt.Prompt
    summary: str
    summary_upto_seq: int | None  # set when older turns were folded this turn
    fold_tokens: int


def prepare(ctx: TurnContext, message: str) -> Prepared:
    """The prompt for this turn; folds turns that no longer fit into the running summary."""
    budget = int(os.environ.get("CHAT_HISTORY_BUDGET_TOKENS", DEFAULT_HISTORY_BUDGET))
    built = prompt.build_prompt(ctx.persona, ctx.user_name, ctx.summary, ctx.history, message,
                                budget)
    if not built.dropped:
        return Prepared(built, ctx.summary, None, 0)
    request = prompt.fold_request(ctx.summary, built.dropped, ctx.persona.name, ctx.user_name)
    folded = gemini.generate("You write concise story summaries.",
                             [{"role": "user", "parts": [{"text": request}]}],
                             ctx.safety_level)
    upto = ctx.seqs[len(built.dropped) - 1]
    kept = ctx.history[len(built.dropped):]
    rebuilt = prompt.build_prompt(ctx.persona, ctx.user_name, folded.text, kept, message,
                                  budget)
    return Prepared(rebuilt, folded.text, upto, folded.input_tokens + folded.output_tokens)


def store(tx: Any, ctx: TurnContext, message: str, prepared: Prepared, reply: gemini.Reply
          ) -> dict[str, Any]:
    """The user's message and the reply, the summary, usage and the event: one transaction."""
    conn = tx.conn
    user_message, reply_message = str(uuid.uuid4()), str(uuid.uuid4())
    parent = ctx.history[-1].id if ctx.history else None
    conn.execute(_sql(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content) "
        "VALUES (:id, :c, :p, 'user', :t)"),
        {"id": user_message, "c": ctx.conversation_id, "p": parent, "t": message})
    conn.execute(_sql(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, input_tokens, "
        "output_tokens) VALUES (:id, :c, :p, 'assistant', :t, :i, :o)"),
        {"id": reply_message, "c": ctx.conversation_id, "p": user_message, "t": reply.text,
         "i": reply.input_tokens, "o": reply.output_tokens})
    conn.execute(_sql(
        "UPDATE conversations SET last_message_at = now(), updated_at = now(), summary = :s, "
        "summary_upto_seq = COALESCE(:upto, summary_upto_seq) WHERE id = CAST(:c AS uuid)"),
        {"s": prepared.summary, "upto": prepared.summary_upto_seq, "c": ctx.conversation_id})
    tokens = reply.input_tokens + reply.output_tokens + prepared.fold_tokens
    conn.execute(_sql(
        "INSERT INTO token_usage (user_id, day, tokens) VALUES "
        "(CAST(:u AS uuid), (now() AT TIME ZONE 'UTC')::date, :t) "
        "ON CONFLICT (user_id, day) DO UPDATE SET tokens = token_usage.tokens + :t"),
        {"u": ctx.user_id, "t": tokens})
    tx.emit(CHAT_TOPIC, Envelope("chat.turn_completed", {
        "user_id": ctx.user_id, "character_id": ctx.character_id,
        "conversation_id": ctx.conversation_id, "message_id": reply_message,
        "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}))
    return {"conversation_id": ctx.conversation_id, "user_message_id": user_message,
            "reply": {"id": reply_message, "role": "assistant", "content": reply.text,
                      "parent_id": user_message},
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                      "summary_tokens": prepared.fold_tokens, "model": reply.model,
                      "attempts": reply.attempts}}
