"""Samplers, generate, stream_generate and beam_search: what each one promises, on hand-made logits, a tiny
GPT and a toy model whose probabilities are written out by hand."""

import math

import numpy as np
import pytest

from tinyllm.generate import beam_search, generate, stream_generate
from tinyllm.model import GPT, GPTConfig
from tinyllm.sampling import (apply_repetition_penalty, apply_temperature, greedy, sample_from_logits, token_probabilities,
                              top_k_filter, top_p_filter)
from tinyllm import backend
from tinyllm.backend import to_numpy

uses_float64 = pytest.mark.usefixtures("float64")
NEG_INF = -np.inf


def tiny_gpt(block_size=16, vocab_size=40, scale=8.0):
    """A small GPT with its weights scaled up so that its next-token distributions are far from uniform."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16), seed=0)
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= scale
    return model.eval()


class BigramToy:
    """A fake language model with GPT's generation interface: the next token depends only on the last one,
    with probabilities from a hand-written table. Tokens: 0 start, 1 A, 2 B, 3 X, 4 Y, 5 end.

        start → A 0.55, B 0.45      A → X 0.5, Y 0.5      B → X 0.9, Y 0.1
    Greedy takes A (0.55) and then X: p = 0.275. Beam search keeps B too and finds B X: p = 0.405.
    """

    def __init__(self):
        table = np.full((6, 6), 1e-6)
        table[0, [1, 2]] = [0.55, 0.45]
        table[1, [3, 4]] = [0.5, 0.5]
        table[2, [3, 4]] = [0.9, 0.1]
        table[3:, 5] = 1.0
        self.log_table = np.log(table / table.sum(axis=1, keepdims=True))
        self.config = GPTConfig(vocab_size=6, block_size=32, n_layer=1, n_head=1, n_embd=1)

    def next_token_logits(self, idx, mask=None, positions=None, cache=None):
        return backend.asarray(self.log_table[to_numpy(idx)[:, -1]])    # (B, V)


# -------------------------------------------------------------------------------------------- samplers

def test_greedy_takes_the_first_maximum():
    assert greedy(np.array([1.0, 3.0, 3.0, 2.0])) == 1
    assert greedy(np.array([[0.0, 1.0], [5.0, 1.0]])).tolist() == [1, 0]


def test_temperature_divides_and_rejects_nonsense():
    np.testing.assert_allclose(apply_temperature(np.array([2.0, -4.0]), 2.0), [1.0, -2.0])
    with pytest.raises(ValueError, match="-1"):
        apply_temperature(np.array([1.0]), -1)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = np.array([2.0, -2.0, 2.0, -2.0])
    out = apply_repetition_penalty(logits, seen=[0, 1], penalty=2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 2.0, -2.0])
    batch = apply_repetition_penalty(np.stack([logits, logits]), np.array([[1, 0, 0, 0], [0, 0, 1, 1]], bool), 2.0)
    np.testing.assert_allclose(batch, [[1.0, -2.0, 2.0, -2.0], [2.0, -2.0, 1.0, -4.0]])


def test_top_k_keeps_exactly_k_and_breaks_ties_by_lower_id():
    logits = np.array([1.0, 5.0, 3.0, 3.0, 3.0, 0.0])
    out = top_k_filter(logits, 3)
    np.testing.assert_array_equal(out, [NEG_INF, 5.0, 3.0, 3.0, NEG_INF, NEG_INF])
    np.testing.assert_array_equal(top_k_filter(logits, 10), logits)


def test_top_k_of_one_and_temperature_zero_are_greedy():
    logits = np.array([[0.3, 2.0, 2.0, -1.0], [4.0, 0.0, 4.5, 1.0]])
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert sample_from_logits(top_k_filter(logits, 1), rng).tolist() == greedy(logits).tolist()
    model = tiny_gpt()
    greedy_run = generate(model, [1, 2, 3], 15, temperature=0)
    assert generate(model, [1, 2, 3], 15, temperature=0.7, top_k=1, seed=1) == greedy_run
    assert generate(model, [1, 2, 3], 15, temperature=0, top_k=5, top_p=0.5) == greedy_run


@pytest.mark.parametrize("p, expected_kept", [
    (0.5, [0]),            # 0.5 alone reaches 0.5
    (0.51, [0, 1]),        # needs the next one: 0.75
    (0.75, [0, 1]),        # exactly reached (cumulative sums within 1e-12 of p count)
    (0.76, [0, 1, 2]),
    (1.0, [0, 1, 2, 3]),
])
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(p, expected_kept):
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125]))
    kept = np.flatnonzero(np.isfinite(top_p_filter(logits, p))).tolist()
    assert kept == expected_kept, f"p={p}: kept {kept}"


def test_top_p_breaks_ties_by_lower_token_id():
    # probabilities 0.2, 0.4, 0.2, 0.2: the 0.4 first, then among the tied 0.2s the lowest ids
    logits = np.log(np.array([0.2, 0.4, 0.2, 0.2]))
    kept = lambda p: np.flatnonzero(np.isfinite(top_p_filter(logits, p))).tolist()
    assert kept(0.5) == [0, 1]
    assert kept(0.7) == [0, 1, 2]
    batch = top_p_filter(np.stack([logits, logits[::-1]]), 0.5)        # rows are independent: 0.2 0.2 0.4 0.2
    assert np.isfinite(batch).tolist() == [[True, True, False, False], [True, False, True, False]]


def test_samples_follow_the_softmax_chi_square():
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5, -0.5])
    probs = token_probabilities(logits)
    rng = np.random.default_rng(1234)
    draws = sample_from_logits(np.tile(logits, (20_000, 1)), rng)
    observed = np.bincount(draws, minlength=len(logits))
    expected = probs * 20_000
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    # 5 degrees of freedom: P(χ² > 20.52) = 0.001 when the sampler is right
    assert chi_square < 20.52, f"χ² = {chi_square:.1f}: observed {observed.tolist()} vs expected {expected.round().tolist()}"


def test_sampling_never_picks_a_filtered_token():
    logits = top_k_filter(np.array([0.0, 10.0, 0.1, 9.0]), 2)
    draws = sample_from_logits(np.tile(logits, (2000, 1)), np.random.default_rng(0))
    assert set(draws.tolist()) == {1, 3}


def test_the_same_seed_gives_the_same_tokens():
    model = tiny_gpt()
    settings = dict(temperature=1.2, top_k=20, top_p=0.95, repetition_penalty=1.3)
    first = generate(model, [1, 2, 3], 20, seed=5, **settings)
    assert generate(model, [1, 2, 3], 20, seed=5, **settings) == first
    assert generate(model, [1, 2, 3], 20, seed=6, **settings) != first, "a different seed should sample differently"


def test_repetition_penalty_reduces_repeats():
    model = tiny_gpt()
    plain = generate(model, [1, 2, 3], 30, temperature=0)
    penalised = generate(model, [1, 2, 3], 30, temperature=0, repetition_penalty=3.0)
    assert len(set(penalised)) > len(set(plain)), f"{penalised} should use more distinct tokens than {plain}"


# ------------------------------------------------------------------------------------------ generation

def test_stream_generate_yields_what_generate_returns():
    model = tiny_gpt()
    streamed = list(stream_generate(model, [4, 5], 12, temperature=0.9, seed=3))
    assert streamed == generate(model, [4, 5], 12, temperature=0.9, seed=3)
    assert len(streamed) == 12 and all(isinstance(t, int) for t in streamed)


def test_on_full_stop_ends_when_the_context_is_full_and_slide_goes_on():
    model = tiny_gpt(block_size=16)
    stopped = generate(model, list(range(10)), 30, temperature=0, on_full="stop")
    assert len(stopped) == 16 - 10 + 1, "tokens until the context holds block_size, plus the one predicted from it"
    assert len(generate(model, list(range(10)), 30, temperature=0)) == 30
    assert len(generate(model, list(range(20)), 5, temperature=0)) == 5, "a long prompt is cut when sliding"


def test_generate_restores_the_training_mode():
    model = tiny_gpt().train()
    generate(model, [1], 3, temperature=0)
    assert model.training and model.blocks[0].attn.training


# ----------------------------------------------------------------------------------------- beam search

@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_beam_search_finds_the_sequence_greedy_misses(use_cache):
    toy = BigramToy()
    assert generate(toy, [0], 2, temperature=0) == [1, 3]
    (best, score), *_ = beam_search(toy, [0], beam_width=2, max_new_tokens=2, length_penalty=0.0, use_cache=use_cache)
    assert best == [2, 3]
    assert math.isclose(score, math.log(0.45 * 0.9), rel_tol=1e-4)


def test_beam_search_returns_beams_best_first_and_stops_at_stop_ids():
    toy = BigramToy()
    results = beam_search(toy, [0], beam_width=3, max_new_tokens=5, stop_ids=[5])
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True) and len(results) == 3
    assert results[0][0] == [2, 3], "the stop token ends the sequence and is not returned"
    # length normalised: (log 0.45 + log 0.9 + log 1) / 3 tokens, the stop token counted
    assert math.isclose(results[0][1], math.log(0.45 * 0.9) / 3, rel_tol=1e-4)


@uses_float64
def test_beam_width_one_is_greedy():
    model = tiny_gpt()
    (tokens, _), = beam_search(model, [3, 1, 4], beam_width=1, max_new_tokens=25)  # slides on the way
    assert tokens == generate(model, [3, 1, 4], 25, temperature=0)


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, named", [
    (dict(top_p=0.0), "0.0"), (dict(top_p=1.5), "1.5"), (dict(top_k=0), "top_k"),
    (dict(temperature=-0.5), "-0.5"), (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(on_full="wrap"), "wrap"), (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_settings_raise_value_errors_naming_the_value(kwargs, named):
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=named):
        generate(tiny_gpt(), [1, 2], **args)


def test_bad_prompts_raise_value_errors():
    model = tiny_gpt(block_size=16)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="40"):
        generate(model, [1, 40], 3)
    with pytest.raises(ValueError, match="20 tokens.*block_size is 16"):
        generate(model, list(range(20)), 3, on_full="stop")
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, [1], 0, 3)


# ------------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def char_run(tmp_path):
    """A run directory with a tiny (untrained) GPT and a character tokenizer."""
    from tinyllm.checkpoint import save_model
    from tinyllm.tokenizer import CharTokenizer
    from tinyllm.data.instructions import chat_template
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n" + chat_template("alpaca")["prompt"])
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=0)
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 8.0
    save_model(tmp_path / "run", model, tokenizer)
    return tmp_path / "run", model, tokenizer


def run_cli(*argv):
    from tinyllm.cli import main
    return main([str(a) for a in argv])


def test_cli_generate_streams_what_the_library_generates(char_run, capsys):
    run, model, tokenizer = char_run
    assert run_cli("generate", "--ckpt", run, "--prompt", "the cat", "--max-new-tokens", 20, "--seed", 3) == 0
    out, err = capsys.readouterr()
    expected = generate(model, tokenizer.encode("the cat"), 20, temperature=0.8, top_k=40, seed=3)
    assert out == "the cat" + tokenizer.decode(expected) + "\n"
    assert "tokens/s" in err


def test_cli_generate_greedy_and_beam(char_run, capsys):
    run, model, tokenizer = char_run
    run_cli("generate", "--ckpt", run, "--prompt", "ab", "--max-new-tokens", 10, "--temperature", 0, "--no-cache")
    assert capsys.readouterr().out == "ab" + tokenizer.decode(generate(model, tokenizer.encode("ab"), 10, temperature=0)) + "\n"
    run_cli("generate", "--ckpt", run, "--prompt", "ab", "--max-new-tokens", 10, "--beam", 3)
    (best, _), *_ = beam_search(model, tokenizer.encode("ab"), 3, 10)
    assert capsys.readouterr().out == "ab" + tokenizer.decode(best) + "\n"


def test_cli_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert run_cli("generate", "--ckpt", missing, "--prompt", "x") == 2
    assert str(missing) in capsys.readouterr().err
    from tinyllm.cli.generate import _load
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        _load(missing)


def test_cli_bad_sampling_flag_names_the_value(char_run, capsys):
    run, _, _ = char_run
    assert run_cli("generate", "--ckpt", run, "--prompt", "a", "--top-p", 1.5) == 2
    assert "1.5" in capsys.readouterr().err


def test_chat_answers_piped_lines_with_reset_and_quit(char_run, capsys, monkeypatch):
    import io
    run, _, _ = char_run
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n/reset\nabc\n/quit\nnever read\n"))
    assert run_cli("chat", "--ckpt", run, "--max-new-tokens", 8, "--seed", 0) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2, f"one reply line per message before /quit, got {out!r}"
    assert "plain continuation" in err and "forgotten" in err


def test_chat_uses_the_template_and_keeps_history_within_the_window(char_run, capsys, monkeypatch):
    import io
    import json
    import tinyllm.generate as gen
    run, _, tokenizer = char_run
    config = json.loads((run / "config.json").read_text())
    config["template"] = {"prompt": "q. {instruction}\na.", "separator": "\n"}
    (run / "config.json").write_text(json.dumps(config))
    prompts = []
    real = gen.stream_generate
    monkeypatch.setattr(gen, "stream_generate", lambda m, p, *a, **k: (prompts.append(p), real(m, p, *a, **k))[1])
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"message {c}\n" for c in "abcdef")))
    assert run_cli("chat", "--ckpt", run, "--max-new-tokens", 8, "--temperature", 0) == 0
    assert "instruction template" in capsys.readouterr().err
    assert tokenizer.decode(prompts[0]) == "q. message a\na."
    assert all(len(p) <= 32 - 8 for p in prompts), "history must leave room for the reply in the 32-token window"
    assert tokenizer.decode(prompts[-1]).endswith("q. message f\na.") and "message a" not in tokenizer.decode(prompts[-1])


def test_text_stream_waits_for_a_whole_utf8_character():
    import io
    from tinyllm.cli.generate import TextStream

    class Bytes:  # a byte-level "tokenizer": id = byte value
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    out = io.StringIO()
    stream = TextStream(Bytes(), out)
    for byte in "aé".encode():
        stream.add(byte)
        assert "\ufffd" not in out.getvalue()
    assert out.getvalue() == "aé"


def test_chat_reads_the_template_and_end_token_that_instruction_finetuning_writes(char_run, capsys, monkeypatch):
    import io
    import json
    import tinyllm.generate as gen
    from tinyllm.data.instructions import chat_template
    run, _, tokenizer = char_run
    config = json.loads((run / "config.json").read_text())
    config.update(template=chat_template("alpaca"), end_token="\n")
    (run / "config.json").write_text(json.dumps(config))
    calls = []
    real = gen.stream_generate
    monkeypatch.setattr(gen, "stream_generate", lambda m, p, *a, **k: (calls.append((p, k)), real(m, p, *a, **k))[1])
    monkeypatch.setattr("sys.stdin", io.StringIO("add two and three\n"))
    assert run_cli("chat", "--ckpt", run, "--max-new-tokens", 5) == 0
    prompt, kwargs = calls[0]
    templated = chat_template("alpaca")["prompt"].replace("{instruction}", "add two and three")
    # the template is longer than this model's 32-token window: its end is kept, leaving room for the reply
    assert len(prompt) == 32 - 5 and templated.endswith(tokenizer.decode(prompt))
    assert tokenizer.encode("\n")[0] in kwargs["stop_ids"], "replies must end at the run's end_token"


def test_a_short_row_keeps_going_after_the_long_row_stops_without_overflowing_the_cache():
    # The long prompt stops at once; the short row still carries its left padding in the cache, which then
    # fills before the row's own context does. The decoder must re-prefill instead of overflowing.
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0)
    prompts = [[1, 2, 3, 4, 5, 6], [7]]
    batched = generate(model, prompts, 6, temperature=0, stop_ids=(6,))
    assert batched == [generate(model, p, 6, temperature=0, stop_ids=(6,)) for p in prompts]
