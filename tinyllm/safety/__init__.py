"""Safety testing and content filtering.

    blocklist.py     word and phrase lists: matched as whole words, and an output filter that masks or blocks
                     them in streamed text (``--filter FILE`` of ``generate``, ``chat`` and
                     ``serve``)
    redteam.py       ``tinyllm evaluate --task safety``: the red-team prompt set (redteam.json) → refusal
                     rate, injection success, over-refusal, toxic-word hits, and the bias probe's
                     score gap
    dialogue.py      ``tinyllm evaluate --task dialogue``: a scripted 24-turn conversation through chat's
                     history (``tinyllm.chat_history``) — what is kept, what dropped, whether early
                     facts last

The model learns to decline from refusal examples in the built-in instruction data
(``tinyllm.data.refusals``, ``tinyllm finetune instruct --refusals``). Everything here measures
behaviour with simple, stated rules (phrase lists, word lists, log-probabilities); none of it is a
trained safety classifier.
"""
