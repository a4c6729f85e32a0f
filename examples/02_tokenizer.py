"""Example 02: train a byte-level BPE tokenizer and look inside it.

    python examples/02_tokenizer.py

A language model reads integers, not text. A tokenizer turns text into integers (token ids) and back.
Byte-level BPE starts from the 256 possible bytes, so it can encode any string at all, then learns
"merges": it repeatedly finds the most frequent pair of adjacent tokens in the training text and adds
their concatenation as a new token. Frequent words end up as single tokens, rare ones as a few pieces.
Runs in a few seconds on the built-in corpus (Python's own help pages).
"""

import argparse
import tempfile
import time
from pathlib import Path

from tinyllm.data.text import builtin_corpus
from tinyllm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer


def show_tokens(tok: BPETokenizer, text: str) -> None:
    """Print each token of ``text``: its id and the bytes it stands for."""
    ids = tok.encode(text, allowed_special="all")
    print(f"{text!r} -> {len(ids)} tokens")
    for token_id in ids:
        print(f"  {token_id:>5}  {tok.token_to_bytes(token_id)!r}")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="It takes no options: read and change the code instead.")
parser.parse_args()

text = builtin_corpus()
print(f"training text: the built-in corpus, {len(text.encode('utf-8')):,} bytes\n")

# 1. Train. 1024 tokens = 256 single bytes + 767 merges + 1 special token.
start = time.perf_counter()
tok = BPETokenizer.train(text, vocab_size=1024, pattern="gpt4", special_tokens=["<|endoftext|>"])
print(f"1. trained {tok} in {time.perf_counter() - start:.2f} s")
print("   the first merges are the most frequent pairs of the text:")
for new_id, (first, second) in enumerate(tok.merges[:8], start=256):
    parts = f"{tok.token_to_bytes(first)!r} + {tok.token_to_bytes(second)!r}"
    print(f"   {parts:<22} -> {new_id}: {tok.token_to_bytes(new_id)!r}")

# 2. Encode a sentence. The split pattern first cuts it into chunks (words with their leading space,
#    numbers of up to 3 digits, punctuation runs); BPE then merges inside each chunk.
sentence = "Python's interpreter raises a TypeError; the Wörterbuch 😀"
big = BPETokenizer.train(text, vocab_size=4096)
print("\n2. how a sentence splits into tokens, with 4096 tokens:")
show_tokens(big, sentence)
print("   words frequent in the corpus are one token; the German word and the emoji fall back to")
print("   pieces and single bytes (the emoji's 4 UTF-8 bytes are 4 tokens). With only 1024 tokens:")
print("  ", " | ".join(tok.token_to_bytes(i).decode("utf-8", "backslashreplace") for i in tok.encode(sentence)))

# 3. Compression: bytes per token grows with the vocabulary, so the model sees shorter sequences.
print("\n3. compression on the training text (bytes per token):")
print(f"   characters:  {len(text.encode()) / len(CharTokenizer.from_text(text).encode(text)):.2f}")
for bpe in (BPETokenizer.train(text, 300), tok, big):
    print(f"   BPE {bpe.vocab_size:>5}:   {len(text.encode()) / len(bpe.encode_ordinary(text)):.2f}")

# 4. Special tokens are ids that ordinary text never produces, e.g. to mark where a document ends.
#    Text from outside must not smuggle one in, so encode refuses unless you allow it.
print("\n4. special tokens:", tok.special_tokens)
doc = "the end.<|endoftext|>A new start"
print("   allowed:   ", [tok.decode([i]) for i in tok.encode(doc, allowed_special="all")])
print("   as text:   ", [tok.decode([i]) for i in tok.encode_ordinary(doc)])
try:
    tok.encode(doc)
except ValueError as error:
    print("   by default: ValueError:", str(error)[:60], "...")

# 5. Decoding a list cut in the middle of a character gives U+FFFD for the incomplete bytes.
ids = tok.encode("😀")
print(f"\n5. '😀' is {len(ids)} tokens {ids}; decoding only the first gives {tok.decode(ids[:1])!r}")

# 6. Save and load: a readable JSON file, one merge per line.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "tokenizer.json"
    tok.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    print(f"\n6. saved {path.name} ({path.stat().st_size:,} bytes); its merges start like this:")
    start = lines.index('  "merges": [')
    print("\n".join("   " + line for line in lines[start : start + 5]))
    loaded = load_tokenizer(path)
    assert loaded.encode(text) == tok.encode(text)
    print("   loaded it back: identical ids on the whole corpus")
