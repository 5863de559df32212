"""A chat turn: the user's message, the character's reply from Gemini, stored together.

The prompt puts the persona first (a stable prefix Gemini can cache), then the running summary,
then the newest history that fits the token budget; turns that fall out of the window are
folded into the summary by the model instead of being dropped silently. Usage from Gemini's
`usageMetadata` counts against a per-user daily token quota. The reply, the user's message, the
usage and `chat.turn_completed` commit in one transaction (outbox).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
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


# Today's token use (UTC days) of a user.
_USED_TODAY = ("SELECT coalesce(sum(tokens), 0) FROM token_usage WHERE user_id = {user} "
               "AND day = (now() AT TIME ZONE 'UTC')::date")


def quota(conn: Connection, user_id: str) -> dict[str, Any]:
    """Today's token use against the quota."""
    return quota_state(int(conn.execute(_sql(_USED_TODAY.format(user="CAST(:u AS uuid)")),
                                        {"u": user_id}).scalar_one()))


def quota_state(used: int) -> dict[str, Any]:
    limit = daily_quota()
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                               microsecond=0)
    return {"limit": limit, "used": used, "remaining": max(0, limit - used),
            "resets_at": midnight.isoformat()}


def require_quota(ctx: TurnContext) -> None:
    """429 once today's tokens are spent (as read with the turn's context)."""
    state = quota_state(ctx.tokens_used_today)
    if state["remaining"] <= 0:
        wait = int((datetime.fromisoformat(state["resets_at"]) - datetime.now(UTC))
                   .total_seconds()) + 1
        raise errors.TooManyRequests("today's chat token quota is spent", code="quota_exhausted",
                                     headers={"Retry-After": str(wait)}, quota=state)


@dataclass(frozen=True)
class Branch:
    """Where a turn's new messages attach. A plain turn extends the active path; an edit adds a
    sibling of an earlier user message; a regeneration adds a sibling of the last reply. What
    they replace stays stored, inactive, and can be selected again."""

    kind: str  # "turn", "edit" or "regenerate"
    attach_to: str | None  # parent of the first new message
    replaces_from_seq: int | None  # active messages from this seq on leave the active path


@dataclass(frozen=True)
class TurnContext:
    user_id: str
    user_name: str
    conversation_id: str
    character_id: str
    persona: prompt.Persona
    safety_level: str
    summary: str
    summary_upto_seq: int
    history: tuple[prompt.Turn, ...]
    seqs: tuple[int, ...]  # seq of each history turn
    branch: Branch
    tokens_used_today: int
    version: int  # the conversation's version when the turn was read (read first)


# The conversation, its character, the user's name, the account's restrictions (if any),
# today's token use, the version, and the active history after the summary (or all of it when
# the turn cuts the path inside the summarized part) and before the cut: one round trip, one
# snapshot.
_CONVERSATION = (
    "SELECT c.summary, c.summary_upto_seq, ch.id, ch.name, ch.description, ch.personality, "
    "ch.scenario, ch.system_prompt, ch.example_dialogue, ch.post_history_instructions, "
    "ch.safety_level, u.display_name, r.status, r.conversations_read_only, r.chat_blocked, "
    "r.claims_blocked, (" + _USED_TODAY.format(user="c.user_id") + "), c.version, "
    "(SELECT json_agg(json_build_array(m.id, m.role, m.content, m.seq) ORDER BY m.seq) "
    " FROM messages m WHERE m.conversation_id = c.id AND m.active "
    " AND m.role IN ('user', 'assistant') AND m.seq < :cut AND m.seq > "
    " CASE WHEN :cut <= c.summary_upto_seq THEN 0 ELSE c.summary_upto_seq END) "
    "FROM conversations c "
    "JOIN characters ch ON ch.id = c.character_id JOIN users u ON u.id = c.user_id "
    "LEFT JOIN account_restrictions r ON r.user_id = c.user_id "
    "WHERE c.id = CAST(:c AS uuid) AND c.user_id = CAST(:u AS uuid) AND c.deleted_at IS NULL")


def _context(conn: Connection, user_id: str, conversation_id: str, cut_seq: int | None,
             branch: Branch) -> TurnContext:
    """The conversation (the caller's own), its character, and the active history before
    `cut_seq`. A branch cut inside the summarized part cannot use the summary (it tells of
    messages the branch replaces): such a turn starts from the full history again."""
    cut = cut_seq if cut_seq is not None else 2**63 - 1
    row = conn.execute(_sql(_CONVERSATION), {"c": conversation_id, "u": user_id,
                                             "cut": cut}).first()
    if row is None:
        lifecycle.require_can_chat(conn, user_id)  # a blocked account hears that first
        raise errors.NotFound("no such conversation", code="conversation_not_found")
    if row[12] is not None:
        lifecycle.check_can_chat(lifecycle.Restrictions(*row[12:16]))
    summary, upto = row[0], int(row[1])
    if cut <= upto:
        summary, upto = "", 0
    messages = row[18] or []  # [id, role, content, seq] each, in path order
    persona = prompt.Persona(name=row[3], description=row[4], personality=row[5],
                             scenario=row[6], system_prompt=row[7], example_dialogue=row[8],
                             post_history_instructions=row[9])
    return TurnContext(user_id, row[11], conversation_id, str(row[2]), persona, row[10],
                       summary, upto,
                       tuple(prompt.Turn(str(m[0]), m[1], m[2]) for m in messages),
                       tuple(int(m[3]) for m in messages), branch, int(row[16]), int(row[17]))


def _tail(conn: Connection, conversation_id: str) -> Any:
    """The last message of the active path: (id, parent_id, role, content, seq)."""
    return conn.execute(_sql(
        "SELECT id, parent_id, role, content, seq FROM messages "
        "WHERE conversation_id = CAST(:c AS uuid) AND active ORDER BY seq DESC LIMIT 1"),
        {"c": conversation_id}).first()


def _checked_tail(conn: Connection, user_id: str, conversation_id: str) -> tuple[Any, int]:
    """The account may chat and owns the conversation (404 otherwise, before anything about
    its messages is revealed); then the active path's last message, and the conversation's
    version read before it."""
    lifecycle.require_can_chat(conn, user_id)
    owned = conn.execute(_sql(
        "SELECT version FROM conversations WHERE id = CAST(:c AS uuid) "
        "AND user_id = CAST(:u AS uuid) AND deleted_at IS NULL"),
        {"c": conversation_id, "u": user_id}).first()
    if owned is None:
        raise errors.NotFound("no such conversation", code="conversation_not_found")
    return _tail(conn, conversation_id), int(owned[0])


def load(conn: Connection, user_id: str, conversation_id: str) -> TurnContext:
    """A plain turn: the new message extends the active path. Its tail is the history's last
    message (every active message after the summary is in it); only a history that is all
    summarized needs the tail read on its own."""
    ctx = _context(conn, user_id, conversation_id, None, Branch("turn", None, None))
    if ctx.history:
        tail_id: str | None = ctx.history[-1].id
    else:
        tail = _tail(conn, conversation_id)
        tail_id = str(tail[0]) if tail else None
    return replace(ctx, branch=Branch("turn", tail_id, None))


def load_edit(conn: Connection, user_id: str, conversation_id: str, message_id: str
              ) -> TurnContext:
    """An edit of a user message on the active path: the edited text becomes a sibling of it,
    and the conversation continues from there."""
    _, version = _checked_tail(conn, user_id, conversation_id)
    target = conn.execute(_sql(
        "SELECT parent_id, seq, role, active FROM messages "
        "WHERE id = CAST(:m AS uuid) AND conversation_id = CAST(:c AS uuid)"),
        {"m": message_id, "c": conversation_id}).first()
    if target is None:
        raise errors.NotFound("no such message", code="message_not_found")
    if target[2] != "user" or not target[3]:
        raise errors.Conflict("only a user message on the active path can be edited",
                              code="message_not_editable")
    parent = str(target[0]) if target[0] else None
    return replace(_context(conn, user_id, conversation_id, int(target[1]),
                            Branch("edit", parent, int(target[1]))), version=version)


def load_regenerate(conn: Connection, user_id: str, conversation_id: str
                    ) -> tuple[TurnContext, str]:
    """A new reply to the last user message, kept beside the old one. Returns the context and
    the user message the reply answers."""
    tail, version = _checked_tail(conn, user_id, conversation_id)
    question = None
    if tail is not None and tail[2] == "assistant" and tail[1] is not None:
        question = conn.execute(_sql(
            "SELECT id, role, content, seq FROM messages WHERE id = :p"), {"p": tail[1]}).first()
    if question is None or question[1] != "user":
        raise errors.Conflict("the last message is not a reply to a user message",
                              code="nothing_to_regenerate")
    return (replace(_context(conn, user_id, conversation_id, int(question[3]),
                             Branch("regenerate", str(question[0]), int(tail[4]))),
                    version=version), question[2])


@dataclass(frozen=True)
class Prepared:
    prompt: prompt.Prompt
    summary: str
    summary_upto_seq: int  # the last message the summary covers after this turn
    fold_tokens: int


def prepare(ctx: TurnContext, message: str) -> Prepared:
    """The prompt for this turn; folds turns that no longer fit into the running summary."""
    budget = int(os.environ.get("CHAT_HISTORY_BUDGET_TOKENS", DEFAULT_HISTORY_BUDGET))
    built = prompt.build_prompt(ctx.persona, ctx.user_name, ctx.summary, ctx.history, message,
                                budget)
    if not built.dropped:
        return Prepared(built, ctx.summary, ctx.summary_upto_seq, 0)
    request = prompt.fold_request(ctx.summary, built.dropped, ctx.persona.name, ctx.user_name)
    folded = gemini.generate("You write concise story summaries.",
                             [{"role": "user", "parts": [{"text": request}]}],
                             ctx.safety_level)
    upto = ctx.seqs[len(built.dropped) - 1]
    kept = ctx.history[len(built.dropped):]
    rebuilt = prompt.build_prompt(ctx.persona, ctx.user_name, folded.text, kept, message,
                                  budget)
    return Prepared(rebuilt, folded.text, upto, folded.input_tokens + folded.output_tokens)


def store(conn: Connection, ctx: TurnContext, message: str, prepared: Prepared,
          reply: gemini.Reply, idempotency: tuple[str, str] | None = None
          ) -> tuple[dict[str, Any], Any] | None:
    """The usage, and if the conversation is still at the version the turn was read at: the new
    messages, the summary, the version bump, the `chat.turn_completed` outbox row and the
    stored Idempotency-Key answer. One statement, so one round trip and its own transaction
    (autocommit). Returns (the answer, the outbox row to publish), or None when another turn
    changed the conversation meanwhile (then only the usage is stored: the tokens were spent).

    The version check is the row update's WHERE: an update that waits for a concurrent turn's
    row lock re-checks it against the row that turn committed, so two turns never both extend
    the same path. Everything else is conditional on that update's result."""
    from shared import outbox

    branch = ctx.branch
    user_message = branch.attach_to if branch.kind == "regenerate" else str(uuid.uuid4())
    reply_message = str(uuid.uuid4())
    envelope = Envelope("chat.turn_completed", {
        "user_id": ctx.user_id, "character_id": ctx.character_id,
        "conversation_id": ctx.conversation_id, "message_id": reply_message,
        "kind": branch.kind, "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens})
    event = outbox.pending(CHAT_TOPIC, envelope)
    body = {"conversation_id": ctx.conversation_id, "kind": branch.kind,
            "user_message_id": user_message,
            "reply": {"id": reply_message, "role": "assistant", "content": reply.text,
                      "parent_id": user_message},
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                      "summary_tokens": prepared.fold_tokens, "model": reply.model,
                      "attempts": reply.attempts}}
    # The new messages in path order (a regeneration adds only the reply).
    rows = [] if branch.kind == "regenerate" else [
        (user_message, branch.attach_to, "user", message, 0, 0)]
    rows.append((reply_message, user_message, "assistant", reply.text, reply.input_tokens,
                 reply.output_tokens))
    params: dict[str, Any] = {
        "c": ctx.conversation_id, "u": ctx.user_id, "version": ctx.version,
        "tokens": reply.input_tokens + reply.output_tokens + prepared.fold_tokens,
        "count": len(rows), "from_seq": branch.replaces_from_seq,
        "summary": prepared.summary, "upto": prepared.summary_upto_seq,
    } | outbox.outbox_params(envelope, event)
    for n, (message_id, parent, role, content, tokens_in, tokens_out) in enumerate(rows, 1):
        params |= {f"id{n}": message_id, f"parent{n}": parent, f"role{n}": role,
                   f"content{n}": content, f"in{n}": tokens_in, f"out{n}": tokens_out}
    values = ", ".join(f"({n}, CAST(:id{n} AS uuid), CAST(:parent{n} AS uuid), :role{n}, "
                       f":content{n}, CAST(:in{n} AS integer), CAST(:out{n} AS integer))"
                       for n in range(1, len(rows) + 1))
    parts = [
        "usage AS (INSERT INTO token_usage (user_id, day, tokens) VALUES "
        "(CAST(:u AS uuid), (now() AT TIME ZONE 'UTC')::date, :tokens) "
        "ON CONFLICT (user_id, day) DO UPDATE SET tokens = token_usage.tokens + :tokens)",
        "ok AS (UPDATE conversations SET version = version + 1, last_message_at = now(), "
        "updated_at = now(), summary = :summary, summary_upto_seq = :upto "
        "WHERE id = CAST(:c AS uuid) AND version = :version RETURNING id)",
        # Sequence numbers taken together and sorted: the user's message precedes the reply.
        "seqs AS (SELECT array_agg(n ORDER BY n) AS s FROM (SELECT "
        "nextval(pg_get_serial_sequence('messages', 'seq')) AS n "
        "FROM generate_series(1, :count)) taken WHERE EXISTS (SELECT 1 FROM ok))",
        "inserted AS (INSERT INTO messages (id, conversation_id, parent_id, role, content, "
        "input_tokens, output_tokens, seq) SELECT v.id, CAST(:c AS uuid), v.parent, v.role, "
        "v.content, v.tokens_in, v.tokens_out, seqs.s[v.ord] FROM seqs, (VALUES " + values + ") "
        "AS v(ord, id, parent, role, content, tokens_in, tokens_out) "
        "WHERE EXISTS (SELECT 1 FROM ok))",
        "event AS (" + outbox.INSERT + " WHERE EXISTS (SELECT 1 FROM ok) RETURNING id)"]
    if branch.replaces_from_seq is not None:
        parts.append(
            "replaced AS (UPDATE messages SET active = false WHERE conversation_id = "
            "CAST(:c AS uuid) AND active AND seq >= :from_seq AND EXISTS (SELECT 1 FROM ok))")
    if idempotency is not None:
        # As idempotency.complete stores it: the answer commits with the turn.
        parts.append(
            "stored AS (UPDATE idempotency_keys SET status = 'completed', "
            "response_status = 201, response_body = CAST(:answer AS jsonb) "
            "WHERE scope = :scope AND key = :key AND EXISTS (SELECT 1 FROM ok))")
        params |= {"scope": idempotency[0], "key": idempotency[1],
                   "answer": json.dumps(body, default=str)}
    event_id = conn.execute(_sql(
        "WITH " + ", ".join(parts) + " SELECT (SELECT id FROM event)"), params).scalar_one()
    if event_id is None:
        return None
    return body, event.stored(int(event_id))
