"""Prompt building for a chat turn: stable prefix, contiguous window, merging, placeholders."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from emulators import vertex_standin
from shared.prompt import (
    Persona,
    Prompt,
    Turn,
    build_prompt,
    estimate_tokens,
    fold_request,
    system_instruction,
)

ROOT = Path(__file__).resolve().parents[2]
SERA = Persona(
    name="Seraphina", description="A guardian of {{char}}'s forest glade.",
    personality="kind, protective", scenario="{{user}} wakes up in her glade.",
    system_prompt="Answer as {{Char}}, in short paragraphs.",
    example_dialogue="<START>\n{{user}}: Who are you?\n{{char}}: I watch over this glade.")
PLAIN = Persona(name="Sera")


def turn(i: int, role: str = "user", text: str | None = None) -> Turn:
    return Turn(f"t{i}", role, text if text is not None else f"turn {i}")  # type: ignore[arg-type]


def alternating(n: int, length: int = 40) -> list[Turn]:
    """u1, a1, u2, a2, ...: each text exactly `length` characters."""
    return [turn(i, "user" if i % 2 else "assistant", f"{i:<{length}}") for i in range(1, n + 1)]


def chars(prompt: Prompt) -> int:
    return len(prompt.system_instruction) + sum(
        len(p["text"]) for c in prompt.contents for p in c["parts"])


def texts(prompt: Prompt) -> list[tuple[str, str]]:
    return [(c["role"], c["parts"][0]["text"]) for c in prompt.contents]


def test_estimate_tokens():
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_persona_from_character_view():
    view = {"id": "c1", "name": "Seraphina", "description": "d", "personality": "p",
            "scenario": "s", "system_prompt": "sp", "example_dialogue": "ex",
            "post_history_instructions": None, "greeting": "Hi", "tags": ["x"]}
    assert Persona.from_character(view) == Persona("Seraphina", "d", "p", "s", "sp", "ex", "")


def test_system_instruction_is_stable_and_user_independent():
    text = system_instruction(SERA, "Ann")
    assert text == system_instruction(SERA, "Bob") == system_instruction(SERA, "")
    assert text.startswith("You are Seraphina.\n\n## Description\n"
                           "A guardian of Seraphina's forest glade.\n\n## Personality\n")
    order = ["## Description", "## Personality", "## Scenario", "## Example dialogue",
             "## Character instructions", "## Roleplay rules"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    assert "Answer as Seraphina, in short paragraphs." in text
    assert "{{user}} wakes up" in text and "{{char}}" not in text  # {{user}} resolved later
    assert "Ann" not in text


def test_empty_sections_are_left_out():
    text = system_instruction(PLAIN, "Ann")
    assert text.startswith("You are Sera.\n\n## Roleplay rules\n")
    assert "## Description" not in text and "## Scenario" not in text


def test_prefix_identical_across_users_and_histories_summary_after_it():
    prefix = system_instruction(SERA, "")
    a = build_prompt(SERA, "Ann", "", alternating(4), "Hello", 10_000)
    b = build_prompt(SERA, "Bob", "Bob found a key.", [turn(9, text="x")], "Other", 10_000)
    assert a.system_instruction == prefix
    assert b.system_instruction == prefix + "\n\n## Story so far\nBob found a key."


def test_contents_start_with_context_and_map_roles():
    history = [turn(1, "assistant", "Hello {{user}}!"), turn(2, "user", "Hi"),
               turn(3, "assistant", "Welcome.")]
    prompt = build_prompt(PLAIN, "Ann", "", history, "Thanks", 10_000)
    assert texts(prompt) == [
        ("user", "[The roleplay continues. You are talking with Ann; {{user}} means Ann.]"),
        ("model", "Hello Ann!"), ("user", "Hi"), ("model", "Welcome."), ("user", "Thanks")]
    assert prompt.dropped == ()
    assert all(c["parts"] == [{"text": c["parts"][0]["text"]}] for c in prompt.contents)


def test_consecutive_roles_merge_with_blank_line():
    history = [turn(1, "user", "one"), turn(2, "assistant", "two"), turn(3, "assistant", "three"),
               turn(4, "user", "four")]
    prompt = build_prompt(PLAIN, "Ann", "", history, "five", 10_000)
    roles = [c["role"] for c in prompt.contents]
    assert roles == ["user", "model", "user"]  # strict alternation
    assert texts(prompt)[0][1].endswith("means Ann.]\n\none")  # context merges with a user turn
    assert texts(prompt)[1:] == [("model", "two\n\nthree"), ("user", "four\n\nfive")]


def test_placeholders_and_post_history_instructions():
    persona = Persona(name="Sera", post_history_instructions="  Stay kind to {{user}}, {{char}}. ")
    history = [turn(1, "assistant", "<BOT> greets <USER>."), turn(2, "user", "I am {{USER}}.")]
    prompt = build_prompt(persona, "Ann", "", history, "Hi {{char}}", 10_000)
    assert texts(prompt)[1:] == [("model", "Sera greets Ann."),
                                 ("user", "I am Ann.\n\nHi Sera\nStay kind to Ann, Sera.")]
    assert "Stay kind" not in prompt.system_instruction


def test_post_history_instructions_without_history_go_last():
    persona = Persona(name="Sera", post_history_instructions="Be brief.")
    prompt = build_prompt(persona, "Ann", "", [], "Hello", 10_000)
    assert len(prompt.contents) == 1  # context block and message are both the user's
    assert prompt.contents[0]["parts"][0]["text"].endswith("\n\nHello\nBe brief.")


def test_window_is_newest_first_under_small_budget():
    history = alternating(6)  # u1 a1 u2 a2 u3 a3, 40 characters each
    fixed = chars(build_prompt(PLAIN, "Ann", "", [], "Hello", 10_000))
    # Prepending a3 adds 40 - 2 (the context block no longer merges into the message), u3 then
    # adds 40 + 2 (it takes the context block's separator): 80 characters, 20 tokens, per pair.
    budget = math.ceil((fixed + 160) / 4)
    prompt = build_prompt(PLAIN, "Ann", "", history, "Hello", budget)
    assert [r for r, _ in texts(prompt)] == ["user", "model", "user", "model", "user"]
    assert texts(prompt)[0][1].endswith("\n\n3" + " " * 39)
    assert [t.strip() for _, t in texts(prompt)[1:]] == ["4", "5", "6", "Hello"]
    assert [t.id for t in prompt.dropped] == ["t1", "t2"]
    assert chars(prompt) == fixed + 160
    assert prompt.prompt_tokens == budget
    # One token less and the older pair goes too (a2 alone would fit: pairs are not the unit).
    smaller = build_prompt(PLAIN, "Ann", "", history, "Hello", budget - 1)
    assert [t.id for t in smaller.dropped] == ["t1", "t2", "t3"]
    assert smaller.prompt_tokens <= budget - 1


def test_window_is_contiguous():
    history = [turn(1, "user", "tiny"), turn(2, "assistant", "x" * 4000),
               turn(3, "user", "recent"), turn(4, "assistant", "reply")]
    prompt = build_prompt(PLAIN, "Ann", "", history, "Hello", 200)
    assert [t.id for t in prompt.dropped] == ["t1", "t2"]  # t1 would fit, but t2 does not
    assert "tiny" not in str(prompt.contents) and "recent" in str(prompt.contents)
    assert prompt.prompt_tokens <= 200


def test_summary_counts_against_the_budget():
    history = alternating(6)
    # 160 characters for history: two pairs of turns (80 each) without a summary; the summary
    # section takes 18 + 60 of them, leaving room for one pair.
    budget = build_prompt(PLAIN, "Ann", "", [], "Hello", 10_000).prompt_tokens + 40
    without = build_prompt(PLAIN, "Ann", "", history, "Hello", budget)
    with_summary = build_prompt(PLAIN, "Ann", "s" * 60, history, "Hello", budget)
    assert [t.id for t in without.dropped] == ["t1", "t2"]
    assert [t.id for t in with_summary.dropped] == ["t1", "t2", "t3", "t4"]
    assert with_summary.prompt_tokens <= budget


def test_tiny_budget_keeps_no_history_and_still_returns():
    history = alternating(4)
    prompt = build_prompt(SERA, "Ann", "summary", history, "Hello", 1)
    assert prompt.dropped == tuple(history)
    assert len(prompt.contents) == 1 and prompt.contents[0]["parts"][0]["text"].endswith("Hello")
    assert prompt.prompt_tokens > 1  # the caller decides whether to send it


def test_budget_must_be_positive():
    for budget in (0, -5):
        with pytest.raises(ValueError, match="budget_tokens"):
            build_prompt(PLAIN, "Ann", "", [], "Hello", budget)


def test_turn_role_is_checked():
    with pytest.raises(ValueError, match="role"):
        Turn("t1", "system", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [1, 188, 195, 203, 214, 225, 10_000])
def test_prompt_tokens_match_the_vertex_standin(budget):
    history = [turn(1, "assistant", "Hello {{user}}!"), *alternating(7, 23)]
    prompt = build_prompt(SERA, "Ann", "They met.", history, "Hi", budget)
    body = {"systemInstruction": {"parts": [{"text": prompt.system_instruction}]},
            "contents": prompt.contents}
    assert prompt.prompt_tokens == vertex_standin.prompt_tokens(body)
    kept = len(history) - len(prompt.dropped)
    assert prompt.dropped == tuple(history[: len(history) - kept])
    if prompt.dropped and kept:  # maximal: the next older turn would not have fit
        assert build_prompt(SERA, "Ann", "They met.", history[-kept - 1 :], "Hi",
                            10_000).prompt_tokens > budget


def test_fold_request():
    dropped = [turn(1, "assistant", "Hello {{user}},\n  welcome!"), turn(2, "user", "Hi <BOT>.")]
    text = fold_request("Ann arrived.", dropped, "Sera", "Ann")
    assert text == fold_request("Ann arrived.", dropped, "Sera", "Ann")
    assert text.startswith("Update the running summary of a roleplay between Sera and Ann.")
    assert "third person" in text and "at most 200 words" in text
    assert text.endswith("Previous summary:\nAnn arrived.\n\n"
                         "What happened next (oldest first):\nSera: Hello Ann, welcome!\n"
                         "Ann: Hi Sera.")
    assert "Previous summary:\n(none yet)" in fold_request("", dropped, "Sera", "Ann")


def test_import_stays_stdlib_only():
    code = ("import sys; before = set(sys.modules); import shared.prompt; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] "
            "not in sys.stdlib_module_names and m.split('.')[0] != 'shared'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
