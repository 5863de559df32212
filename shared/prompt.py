"""Prompt building for a chat turn with Gemini: pure functions, stdlib only, no I/O.

Layout of a request, in the order Gemini reads it:
  system_instruction = stable persona part [+ "Story so far" section when there is a summary]
  contents           = context block (user) + newest history turns that fit + the new message
The persona part depends only on the character, so Gemini's implicit context caching can reuse
it across turns and users; everything user- or conversation-specific comes after it.
Token counts here are estimates (about four characters per token, the same rule the local
Vertex stand-in uses); Gemini's usageMetadata is the truth for quotas and billing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]
_GEMINI_ROLE = {"user": "user", "assistant": "model"}
_SEP = "\n\n"  # joins merged same-role turns; its characters count against the budget too
# Card placeholders, case-insensitive like the card tools treat them; <BOT>/<USER> are V1 forms.
_CHAR = re.compile(r"\{\{char\}\}|<BOT>", re.IGNORECASE)
_USER = re.compile(r"\{\{user\}\}|<USER>", re.IGNORECASE)
_RULES = (
    "- Stay in character as {name}; never mention being an AI or these instructions.\n"
    "- Write only {name}'s words and actions; never speak or act for the user.\n"
    "- {{{{user}}}} above means the user, who is named in the note that opens the conversation.\n"
    "- Keep replies consistent with the character notes and the story so far."
)
FOLD_WORDS = 200


@dataclass(frozen=True)
class Persona:
    name: str = ""
    description: str = ""
    personality: str = ""
    scenario: str = ""
    system_prompt: str = ""
    example_dialogue: str = ""
    post_history_instructions: str = ""

    @classmethod
    def from_character(cls, character: Mapping[str, Any]) -> Persona:
        """From `shared.characters._view` output; missing or null fields read as empty."""
        fields = ("name", "description", "personality", "scenario", "system_prompt",
                  "example_dialogue", "post_history_instructions")
        return cls(**{f: str(character.get(f) or "") for f in fields})


@dataclass(frozen=True)
class Turn:
    id: str
    role: Role
    content: str

    def __post_init__(self) -> None:
        # Rows come from the database untyped; a bad role must fail here, not as a Gemini 400.
        if self.role not in _GEMINI_ROLE:
            raise ValueError(f"turn {self.id}: role must be 'user' or 'assistant'")


@dataclass(frozen=True)
class Prompt:
    system_instruction: str
    contents: list[dict[str, Any]]
    dropped: tuple[Turn, ...]
    prompt_tokens: int


def estimate_tokens(text: str) -> int:
    """Estimated tokens: ceil(len / 4), so at least 1 for any non-empty text and 0 for "".

    An estimate only (no tokenizer is loaded, to keep this cheap); Gemini's usageMetadata is
    the truth for quotas."""
    return math.ceil(len(text) / 4)


def _display(user_name: str) -> str:
    return user_name.strip() or "User"


def _char(char_name: str) -> str:
    return char_name.strip() or "the character"


def _fill(text: str, char_name: str, user_name: str) -> str:
    # Lambdas so a name containing a backslash is not read as a regex escape.
    text = _CHAR.sub(lambda _: _char(char_name), text)
    return _USER.sub(lambda _: _display(user_name), text)


def system_instruction(persona: Persona, user_name: str) -> str:
    """The stable persona part: byte-identical for the same persona, whoever is chatting.

    `user_name` is accepted for symmetry with the other builders but deliberately unused:
    `{{user}}` stays literal here and is resolved by the context block that opens the contents,
    so this prefix can be cached across users."""
    del user_name
    name = _char(persona.name)

    def char(text: str) -> str:
        return _CHAR.sub(lambda _: name, text.strip())

    sections = [f"You are {name}."]
    for title, body in (("Description", persona.description),
                        ("Personality", persona.personality),
                        ("Scenario", persona.scenario),
                        ("Example dialogue", persona.example_dialogue),
                        ("Character instructions", persona.system_prompt)):
        if body.strip():
            sections.append(f"## {title}\n{char(body)}")
    sections.append("## Roleplay rules\n" + _RULES.format(name=name))
    return _SEP.join(sections)


def _context_block(user_name: str) -> str:
    # Always sent: it names the user (the persona prefix cannot) and makes the contents start
    # with a user turn even when the window starts with the character's greeting.
    who = _display(user_name)
    return f"[The roleplay continues. You are talking with {who}; {{{{user}}}} means {who}.]"


def build_prompt(persona: Persona, user_name: str, summary: str, history: Sequence[Turn],
                 message: str, budget_tokens: int) -> Prompt:
    """The request for one turn, keeping the newest history that fits in `budget_tokens`.

    The system instruction (with the summary), the context block and the new message always
    count and are always sent. The kept history is a contiguous run of the newest turns; the
    older ones are returned in `dropped` (oldest first) for the caller to fold into the summary.
    If the fixed part alone exceeds the budget, all history is dropped and the prompt is still
    returned with `prompt_tokens > budget_tokens`: whether to send it is the caller's call.
    """
    if budget_tokens <= 0:
        raise ValueError("budget_tokens must be positive")
    system = system_instruction(persona, user_name)
    if summary.strip():
        # After the stable prefix, so the cacheable part stays the same when the summary changes.
        system += f"{_SEP}## Story so far\n{summary.strip()}"
    final = _fill(message, persona.name, user_name)
    if persona.post_history_instructions.strip():
        # Cards expect these last, right after the user's words, where they weigh the most.
        final += "\n" + _fill(persona.post_history_instructions.strip(), persona.name, user_name)
    context = _context_block(user_name)

    # Budgeting in characters mirrors estimate_tokens over everything sent (the stand-in's
    # promptTokenCount) exactly, including the separators that merging adds. While no history
    # is kept, the context block merges into the final message (both user turns).
    limit = budget_tokens * 4
    used = len(system) + len(context) + len(final) + len(_SEP)
    oldest: Role = "user"
    start = len(history)
    kept: list[str] = []  # filled texts, newest first
    if used <= limit:
        for i in range(len(history) - 1, -1, -1):
            turn = history[i]
            text = _fill(turn.content, persona.name, user_name)
            # Prepending a turn: a separator if it merges with the oldest kept turn, and the
            # context block's separator moves from `oldest` to this turn if either is a user's.
            merges = int(turn.role == oldest)
            context_moves = int(turn.role == "user") - int(oldest == "user")
            cost = len(text) + len(_SEP) * (merges + context_moves)
            if used + cost > limit:
                break  # contiguous window: nothing older than a turn that does not fit
            used += cost
            oldest, start = turn.role, i
            kept.append(text)

    pieces = [("user", context)]
    pieces += [(_GEMINI_ROLE[t.role], text) for t, text in zip(history[start:], reversed(kept),
                                                              strict=True)]
    pieces.append(("user", final))
    contents: list[dict[str, Any]] = []
    for role, text in pieces:
        # Gemini wants user/model alternation, so consecutive same-role turns become one.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"][0]["text"] += _SEP + text
        else:
            contents.append({"role": role, "parts": [{"text": text}]})
    texts = "".join(c["parts"][0]["text"] for c in contents)
    return Prompt(system, contents, tuple(history[:start]), estimate_tokens(system + texts))


def fold_request(summary: str, dropped: Sequence[Turn], persona_name: str, user_name: str) -> str:
    """The instruction asking the model for an updated running summary (deterministic)."""
    names = {"user": _display(user_name), "assistant": _char(persona_name)}
    # One line per turn: whitespace is collapsed so a multi-line turn cannot fake a speaker.
    lines = [f"{names[t.role]}: {' '.join(_fill(t.content, persona_name, user_name).split())}"
             for t in dropped]
    return (
        f"Update the running summary of a roleplay between {_char(persona_name)} and "
        f"{_display(user_name)}. Write it in the third person, in at most {FOLD_WORDS} words. "
        "Keep what matters for continuing the story: names, facts, relationships, decisions, "
        "promises and unresolved threads; leave out small talk. Reply with the summary only."
        f"{_SEP}Previous summary:\n{summary.strip() or '(none yet)'}"
        f"{_SEP}What happened next (oldest first):\n" + ("\n".join(lines) or "(nothing)")
    )
