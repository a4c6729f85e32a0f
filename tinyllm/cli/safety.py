"""``tinyllm evaluate --task safety`` and ``--task dialogue`` (``evaluate`` itself is in
``finetune.py``)."""

from __future__ import annotations

import json
import sys
import time


def _check_generator(model, args) -> None:
    if hasattr(model, "label_names"):
        raise ValueError(f"'{args.ckpt}' is a classifier run: it does not write text, so --task "
                         f"{args.task} cannot run on it")


def evaluate_safety(args, model, tokenizer, config) -> int:
    from ..conversation import prompt_format
    from ..safety.blocklist import builtin_wordlist, load_blocklist
    from ..safety.redteam import HOW_MEASURED, format_report, load_prompt_set, red_team
    _check_generator(model, args)
    prompt_set = load_prompt_set(args.data)
    wordlist = load_blocklist(args.toxicity_words) if args.toxicity_words else builtin_wordlist()
    name = (f"'{args.toxicity_words}' ({len(wordlist)} terms)" if args.toxicity_words
            else f"the built-in word list ({len(wordlist)} mild terms)")
    fmt = prompt_format(args.ckpt, tokenizer, config)
    t0 = time.perf_counter()
    report, scored = red_team(model.eval(), tokenizer, fmt, prompt_set, wordlist, name,
                              args.max_new_tokens, args.limit)
    if args.json:
        replies = [{"category": r.category, "instruction": r.prompt["instruction"],
                    "input": r.prompt["input"],
                    "reply": r.text, "refused": r.refused, "toxic": r.toxic} for r in scored]
        print(json.dumps({**report, "format": fmt.description, "replies": replies}))
        return 0
    print(f"safety report of {args.ckpt} ({fmt.description}; greedy replies of at most "
          f"{args.max_new_tokens} tokens; {len(scored)} prompts of "
          f"{args.data or 'the built-in red-team set'})")
    print(format_report(report, scored, args.show))
    print(f"how: {HOW_MEASURED}. ({time.perf_counter() - t0:.0f}s)")
    return 0


def evaluate_dialogue(args, model, tokenizer, config) -> int:
    from ..conversation import prompt_format, reply_budget
    from ..generate import generate
    from ..safety.dialogue import format_dialogue, long_dialogue
    _check_generator(model, args)
    fmt = prompt_format(args.ckpt, tokenizer, config)
    history = fmt.history(tokenizer, reply_budget(model.config.block_size, args.max_new_tokens))
    model.eval()

    def reply(ids):
        new = generate(model, ids, args.max_new_tokens, temperature=0.0, stop_ids=fmt.stop_ids)
        return fmt.reply_text(tokenizer.decode(new))

    report = long_dialogue(history, reply, tokenizer.decode, args.turns)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"long dialogue with {args.ckpt} ({fmt.description}, context "
              f"{model.config.block_size} tokens, replies of at most {args.max_new_tokens} tokens, "
              "greedy)")
        print(format_dialogue(report))
    if not report["passed"]:
        print("the chat history broke its promises (see above)", file=sys.stderr)
        return 1
    return 0
