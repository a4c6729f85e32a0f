"""A long conversation through ``tinyllm chat``'s history: is it kept and cut as it should be, and
does a fact said early survive?

The script: the user states three facts in the first turns ("My name is Ada."), talks about other
things for many turns, then asks about each fact ("What is my name?"). At every turn the check
builds the prompt exactly as ``tinyllm chat`` does (``tinyllm.conversation.ChatHistory``), decodes
it, and verifies what the history promises:

    fits        the prompt has at most ``budget`` tokens
    newest      the new message is in the prompt (unless it alone is longer than the budget)
    in order    every turn the history says it kept is in the prompt, oldest first
    dropped     no dropped turn is in the prompt, and none comes back later

At each question it reports whether the fact's turn is still in the context — when it is not, no
model could answer, and the report says at which turn it was dropped — and whether the reply
contains the answer. The first part tests the machinery and holds for any model; the second measures
the model.
"""

from __future__ import annotations

FACTS = (("My name is Ada.", "What is my name?", "Ada"),
         ("I live in Lisbon.", "Which city do I live in?", "Lisbon"),
         ("My favourite number is 7.", "What is my favourite number?", "7"))
FILLER = ("Add the two numbers: 3 + 4", "Sort the words: stone,apple", "What is a list in Python?",
          "Name a colour.", "How many words are in: red green blue", "Reverse the words: key,value",
          "What does a function return?", "Subtract: 9 - 5", "What is a module?", "Say hello.",
          "What is a tuple?", "Add the two numbers: 10 + 2", "What is a loop?",
          "Sort the words: time,code",
          "Name an animal.", "What is a string?", "Count the words: one two",
          "What is an exception?", "Reverse the words: text,line", "What is a dictionary?")
MIN_TURNS = 2 * len(FACTS) + 1


def script(turns: int = 24) -> list[tuple[str, int | None]]:
    """The messages, each with the index of the fact it asks about (None for the others)."""
    if turns < MIN_TURNS:
        raise ValueError(f"the long-dialogue check needs at least {MIN_TURNS} turns, got {turns}")
    filler = [FILLER[i % len(FILLER)] for i in range(turns - 2 * len(FACTS))]
    return ([(fact, None) for fact, _, _ in FACTS] + [(m, None) for m in filler]
            + [(question, k) for k, (_, question, _) in enumerate(FACTS)])


def long_dialogue(history, reply, decode, turns: int = 24) -> dict:
    """Run the script through ``history`` (a fresh ``ChatHistory``); ``reply(prompt_ids)`` answers a
    turn, ``decode(ids)`` is the tokenizer's. Returns the checks, the facts' fate and a row per
    turn."""
    messages = script(turns)
    unique = {m for m, _ in messages if sum(m == other for other, _ in messages) == 1}
    failures, rows, facts, dropped_at = [], [], [], {}
    for number, (message, asks) in enumerate(messages, start=1):
        before = history.dropped
        ids = history.prompt(message)
        text = decode(ids)
        for k in range(before, history.dropped):
            dropped_at[k] = number
        problems = _problems(history, len(ids), text, message, before, unique)
        failures += [f"turn {number}: {problem}" for problem in problems]
        answer = reply(ids)
        rows.append({"turn": number, "prompt_tokens": len(ids), "kept_turns": len(history.kept),
                     "dropped_turns": history.dropped})
        if asks is not None:
            fact, _, expected = FACTS[asks]
            if (fact in text) != (asks >= history.dropped):
                failures.append(f"turn {number}: the history says the fact {fact!r} is "
                                f"{'' if asks >= history.dropped else 'not '}in the prompt, and it "
                                "is not so")
            facts.append({"fact": fact, "question": message, "in_context": fact in text,
                          "dropped_at_turn": dropped_at.get(asks), "reply": answer,
                          "answered": expected.lower() in answer.lower()})
        history.add(message, answer)
    return {"turns": len(messages), "budget": history.budget, "passed": not failures,
            "failures": failures,
            "dropped_turns": history.dropped, "most_turns_kept": max(r["kept_turns"] for r in rows),
            "facts": facts, "per_turn": rows}


def _problems(history, length: int, text: str, message: str, dropped_before: int,
              unique) -> list[str]:
    problems = []
    if length > history.budget:
        problems.append(f"the prompt is longer than the budget of {history.budget} tokens")
    if history.cut == 0 and message not in text:
        problems.append("the new message is not in the prompt")
    at = 0
    for user, _ in history.kept:
        found = text.find(user, at)
        if found < 0:
            problems.append(f"the kept turn {user!r} is not in the prompt, in order")
            break
        at = found + len(user)
    for user, _ in history.turns[:history.dropped]:
        if user in unique and user in text and user != message:
            problems.append(f"the dropped turn {user!r} is still in the prompt")
    if history.dropped < dropped_before:
        problems.append("a dropped turn came back")
    return problems


def format_dialogue(report: dict) -> str:
    lines = [f"{report['turns']} turns within a prompt budget of {report['budget']} tokens: "
             f"history checks {'passed' if report['passed'] else 'FAILED'}; at most "
             f"{report['most_turns_kept']} earlier turns were in one prompt, "
             f"{report['dropped_turns']} dropped by the end"]
    lines += [f"  {failure}" for failure in report["failures"][:10]]
    for fact in report["facts"]:
        where = ("still in the context" if fact["in_context"]
                 else f"dropped at turn {fact['dropped_at_turn']}")
        lines.append(f"  {fact['fact']!r} ({where}) — asked {fact['question']!r} → "
                     f"{fact['reply'][:80]!r} "
                     f"({'answered' if fact['answered'] else 'not answered'})")
    return "\n".join(lines)
