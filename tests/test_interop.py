"""Tests of tinyllm.interop: Hugging Face GPT-2 files in and out, and GPT-2's tokenizer files.

The GPT-2 files are built here, in HF's names and shapes, from random arrays; the expected logits come from
a plain-NumPy GPT-2 forward written below that reads those arrays as HF stores them (Conv1D: x @ W + b).
Optional cross-checks run against tiktoken and transformers when they are installed, and against OpenAI's
real GPT-2 tokenizer files when they sit in ../shared/data/gpt2/ beside the repository.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyllm import backend
from tinyllm.autograd import no_grad
from tinyllm.checkpoint import load_pretrained, save_model
from tinyllm.cli import main as cli_main
from tinyllm.interop import (
    bytes_to_unicode,
    load_gpt2_tokenizer,
    load_gpt2_tokenizer_from,
    load_hf_gpt2,
    save_gpt2_tokenizer,
    save_hf_gpt2,
)
from tinyllm.model import GPT, GPTConfig
from tinyllm.nn import LayerNorm
from tinyllm.safetensors import load_file, read_header, save_file
from tinyllm.tokenizer import BPETokenizer
from tinyllm.backend import to_numpy

REAL_GPT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"
SHAKESPEARE = REAL_GPT2.parent / "tinyshakespeare.txt"
HF_SMALL = dict(n_layer=2, n_head=2, n_embd=16, n_positions=12, vocab_size=37)


# ====================================================================== GPT-2 files built by hand
def hf_config(**overrides) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, **HF_SMALL, **overrides}


def random_hf_tensors(config: dict, seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    """A random GPT-2 in HF's names (no prefix) and shapes, float32 values exactly representable in bfloat16
    (so a float32, float16 or bfloat16 file of them holds the same numbers... float16 up to its rounding)."""
    rng = np.random.default_rng(seed)
    c, v, t = config["n_embd"], config["vocab_size"], config["n_positions"]

    def rand(*shape, std=0.3, mean=0.0):
        x = (mean + std * rng.standard_normal(shape)).astype(np.float32)
        return (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)   # keep bf16's top 16 bits

    tensors = {"wte.weight": rand(v, c), "wpe.weight": rand(t, c)}
    for i in range(config["n_layer"]):
        h = f"h.{i}."
        tensors.update({
            h + "ln_1.weight": rand(c, mean=1.0, std=0.1), h + "ln_1.bias": rand(c, std=0.1),
            h + "attn.c_attn.weight": rand(c, 3 * c), h + "attn.c_attn.bias": rand(3 * c, std=0.1),
            h + "attn.c_proj.weight": rand(c, c), h + "attn.c_proj.bias": rand(c, std=0.1),
            h + "ln_2.weight": rand(c, mean=1.0, std=0.1), h + "ln_2.bias": rand(c, std=0.1),
            h + "mlp.c_fc.weight": rand(c, 4 * c), h + "mlp.c_fc.bias": rand(4 * c, std=0.1),
            h + "mlp.c_proj.weight": rand(4 * c, c), h + "mlp.c_proj.bias": rand(c, std=0.1),
            # buffers older checkpoints carry: the causal mask and the masked value; not weights
            h + "attn.bias": np.tril(np.ones((t, t), np.float32))[None, None],
            h + "attn.masked_bias": np.array(-1e4, np.float32),
        })
    tensors["ln_f.weight"], tensors["ln_f.bias"] = rand(c, mean=1.0, std=0.1), rand(c, std=0.1)
    if not tied:
        tensors["lm_head.weight"] = rand(v, c)
    return tensors


def write_hf_dir(directory: Path, config: dict, tensors: dict, prefix: bool = True, dtype: str = "float32") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    named = {(f"transformer.{k}" if prefix and k != "lm_head.weight" else k): v for k, v in tensors.items()}
    if dtype == "float16":
        named = {k: v.astype(np.float16) for k, v in named.items()}
    save_file(named, directory / "model.safetensors", metadata={"format": "pt"},
              bf16=named.keys() if dtype == "bfloat16" else ())
    return directory


def gpt2_logits_numpy(config: dict, tensors: dict, ids: np.ndarray) -> np.ndarray:
    """GPT-2's forward in float64 NumPy, straight from HF's arrays (Conv1D weights are (in, out): x @ W + b)."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    n_head, c = config["n_head"], config["n_embd"]
    d, eps = c // n_head, config.get("layer_norm_epsilon", 1e-5)
    batch, time_ = ids.shape

    def layer_norm(x, w, b):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w + b

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

    x = t["wte.weight"][ids] + t["wpe.weight"][:time_]                                   # (B, T, C)
    causal = np.tril(np.ones((time_, time_), dtype=bool))
    for i in range(config["n_layer"]):
        p = {k[len(f"h.{i}."):]: v for k, v in t.items() if k.startswith(f"h.{i}.")}
        qkv = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"]) @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]
        q, k, v = (a.reshape(batch, time_, n_head, d).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)     # (B, H, T, T)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        y = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, time_, c)
        x = x + y @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]
        h = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"])
        x = x + gelu_new(h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]
    x = layer_norm(x, t["ln_f.weight"], t["ln_f.bias"])
    head = t["lm_head.weight"] if config.get("tie_word_embeddings") is False else t["wte.weight"]
    return x @ head.T                                                                      # (B, T, V)


def logits_of(model, ids) -> np.ndarray:
    with no_grad():
        return model(np.asarray(ids))[0].numpy()


IDS = np.random.default_rng(7).integers(0, HF_SMALL["vocab_size"], size=(2, HF_SMALL["n_positions"]))


# ====================================================================== HF weights → tinyllm
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("prefix", [True, False], ids=["transformer-prefix", "no-prefix"])
def test_a_hf_gpt2_directory_loads_into_a_gpt_with_the_same_logits(tmp_path, prefix, dtype):
    config = hf_config()
    tensors = random_hf_tensors(config)
    write_hf_dir(tmp_path, config, tensors, prefix=prefix, dtype=dtype)
    stored = {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()} if dtype == "float16" else tensors

    model = load_hf_gpt2(tmp_path)

    assert model.wte.weight.dtype == np.float32, "half-precision files load into the default float dtype"
    np.testing.assert_allclose(logits_of(model, IDS), gpt2_logits_numpy(config, stored, IDS), atol=2e-4, rtol=1e-4,
                               err_msg=f"logits of a {dtype} HF file (prefix={prefix}) differ from GPT-2's forward")


def test_an_untied_head_and_another_layer_norm_epsilon_are_honoured(tmp_path):
    config = hf_config(tie_word_embeddings=False, layer_norm_epsilon=1e-2, activation_function="gelu_pytorch_tanh")
    tensors = random_hf_tensors(config, seed=1, tied=False)
    write_hf_dir(tmp_path, config, tensors)

    model = load_hf_gpt2(tmp_path)

    assert model.lm_head is not None and not model.config.tie_weights
    assert {m.eps for _, m in model.named_modules() if isinstance(m, LayerNorm)} == {1e-2}
    np.testing.assert_allclose(logits_of(model, IDS), gpt2_logits_numpy(config, tensors, IDS), atol=2e-4, rtol=1e-4)


def test_a_tied_checkpoint_that_also_stores_lm_head_uses_wte_like_hf(tmp_path):
    config = hf_config()
    tensors = random_hf_tensors(config, seed=2)
    tensors["lm_head.weight"] = np.zeros_like(tensors["wte.weight"])   # HF would overwrite it with wte when tying
    write_hf_dir(tmp_path, config, tensors)

    model = load_hf_gpt2(tmp_path)

    del tensors["lm_head.weight"]
    np.testing.assert_allclose(logits_of(model, IDS), gpt2_logits_numpy(config, tensors, IDS), atol=2e-4, rtol=1e-4)


def test_a_sharded_checkpoint_with_an_index_loads(tmp_path):
    config = hf_config()
    tensors = random_hf_tensors(config, seed=3)
    (tmp_path / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, tmp_path / shard)
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    model = load_hf_gpt2(tmp_path)

    np.testing.assert_allclose(logits_of(model, IDS), gpt2_logits_numpy(config, tensors, IDS), atol=2e-4, rtol=1e-4)


def test_float64_loading_is_available(tmp_path):
    config = hf_config()
    write_hf_dir(tmp_path, config, random_hf_tensors(config))
    model = load_hf_gpt2(tmp_path, dtype="float64")
    assert model.wte.weight.dtype == np.float64 and backend.dtype == np.float32, "the default dtype is restored"


# ====================================================================== tinyllm → HF files
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_then_load_is_lossless(tmp_path, tie):
    model = GPT(GPTConfig(vocab_size=41, block_size=10, n_layer=2, n_head=2, n_embd=16, tie_weights=tie), seed=3)

    save_hf_gpt2(model, tmp_path)
    loaded = load_hf_gpt2(tmp_path)

    assert loaded.config == model.config
    original, back = model.state_dict(), loaded.state_dict()
    assert original.keys() == back.keys()
    for name in original:
        np.testing.assert_array_equal(to_numpy(back[name]), to_numpy(original[name]), err_msg=f"{name} changed on the way through HF files")


def test_the_saved_files_use_hf_names_layouts_and_config(tmp_path):
    model = GPT(GPTConfig(vocab_size=41, block_size=10, n_layer=2, n_head=2, n_embd=16, tie_weights=False), seed=3)

    save_hf_gpt2(model, tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_ctx"], config["n_positions"], config["n_embd"], config["vocab_size"]) == (10, 10, 16, 41)
    assert config["tie_word_embeddings"] is False and config["activation_function"] == "gelu_new"
    tensors = load_file(tmp_path / "model.safetensors")
    assert not any(name.startswith("transformer.") for name in tensors), "HF's own GPT-2 files have no prefix"
    assert tensors["h.0.attn.c_attn.weight"].shape == (16, 48), "Conv1D weights are (in, out)"
    np.testing.assert_array_equal(tensors["h.1.mlp.c_fc.weight"], model.blocks[1].mlp.fc.weight.numpy().T)
    np.testing.assert_array_equal(tensors["lm_head.weight"], model.lm_head.weight.numpy())


def test_a_model_without_biases_is_exported_with_zero_biases_and_the_same_logits(tmp_path):
    model = GPT(GPTConfig(vocab_size=41, block_size=10, n_layer=1, n_head=2, n_embd=16, bias=False), seed=4)
    ids = IDS[:, :10] % 41

    save_hf_gpt2(model, tmp_path)
    loaded = load_hf_gpt2(tmp_path)

    assert not load_file(tmp_path / "model.safetensors")["h.0.attn.c_attn.bias"].any()
    np.testing.assert_allclose(logits_of(loaded, ids), logits_of(model, ids), atol=1e-5)


@pytest.mark.parametrize("dtype, header_dtype", [("float16", "F16"), ("bfloat16", "BF16")])
def test_half_precision_export_is_smaller_and_close(tmp_path, dtype, header_dtype):
    model = GPT(GPTConfig(vocab_size=41, block_size=10, n_layer=1, n_head=2, n_embd=16), seed=5)
    save_hf_gpt2(model, tmp_path, dtype=dtype)
    assert {info.dtype for info in read_header(tmp_path / "model.safetensors").tensors.values()} == {header_dtype}
    np.testing.assert_allclose(logits_of(load_hf_gpt2(tmp_path), IDS[:, :10] % 41),
                               logits_of(model, IDS[:, :10] % 41), atol=0.05)


# ====================================================================== bad input
def test_a_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"has no config\.json"):
        load_hf_gpt2(tmp_path)


def test_an_unsupported_activation_is_named(tmp_path):
    config = hf_config(activation_function="relu")
    write_hf_dir(tmp_path, config, random_hf_tensors(config))
    with pytest.raises(ValueError, match=r"config\.json.*activation_function 'relu'"):
        load_hf_gpt2(tmp_path)


def test_a_tensor_whose_shape_does_not_match_the_config_is_named(tmp_path):
    config = hf_config()
    tensors = random_hf_tensors(config)
    tensors["h.1.mlp.c_fc.weight"] = tensors["h.1.mlp.c_fc.weight"].T.copy()   # (out, in): an nn.Linear layout
    write_hf_dir(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'transformer\.h\.1\.mlp\.c_fc\.weight' has shape \(64, 16\)"):
        load_hf_gpt2(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("h.1.ln_2.bias"), r"model\.safetensors: missing tensor\(s\) 'h\.1\.ln_2\.bias'"),
    (lambda t: t.update({"h.2.ln_1.weight": np.ones(16, np.float32)}), r"tensor 'transformer\.h\.2\.ln_1\.weight' is not part"),
    (lambda t: t.update({"wpe.weight": np.zeros((12, 16), np.int32)}), r"tensor 'transformer\.wpe\.weight' has dtype int32"),
], ids=["missing", "unexpected", "integer"])
def test_missing_unexpected_and_integer_tensors_are_named(tmp_path, change, message):
    config = hf_config()
    tensors = random_hf_tensors(config)
    change(tensors)
    write_hf_dir(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=message):
        load_hf_gpt2(tmp_path)


def write_raw_safetensors(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("lie, message", [
    ({"data_offsets": [0, 64]}, r"tensor 'wpe\.weight': data_offsets \[0, 64\] span 64 bytes"),
    ({"dtype": "F16"}, r"tensor 'wpe\.weight': data_offsets .* but dtype F16"),
    ({"dtype": "Q4"}, r"tensor 'wpe\.weight': unsupported dtype 'Q4'"),
], ids=["offsets", "dtype-size", "dtype-unknown"])
def test_a_safetensors_header_that_lies_is_refused_naming_file_and_tensor(tmp_path, lie, message):
    config = hf_config()
    (tmp_path / "config.json").write_text(json.dumps(config))
    wpe = np.zeros((12, 16), np.float32)
    header = {"wpe.weight": {"dtype": "F32", "shape": [12, 16], "data_offsets": [0, wpe.nbytes], **lie}}
    write_raw_safetensors(tmp_path / "model.safetensors", header, wpe.tobytes())
    with pytest.raises(ValueError, match=r"model\.safetensors: " + message):
        load_hf_gpt2(tmp_path)


def test_a_pickle_only_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(FileNotFoundError, match="will not unpickle"):
        load_hf_gpt2(tmp_path)


# ====================================================================== GPT-2's tokenizer files
def test_bytes_to_unicode_is_gpt2s_mapping():
    table = bytes_to_unicode()
    assert table[ord("A")] == "A" and table[ord("!")] == "!" and table[0xE9] == "é", "printable bytes are themselves"
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā", "others are chr(256 + n)"
    assert len(set(table.values())) == 256


def gpt2_byte_order() -> list[int]:
    """The byte with id i in GPT-2's vocabulary: printable bytes first, then the rest (tiktoken's order)."""
    table = bytes_to_unicode()
    return sorted(range(256), key=lambda b: (ord(table[b]) >= 256, ord(table[b])))


def write_tiny_vocab(directory: Path) -> dict:
    """A GPT-2-style vocab.json + merges.txt with five merges and <|endoftext|>; returns the vocab."""
    table = bytes_to_unicode()
    vocab = {table[byte]: i for i, byte in enumerate(gpt2_byte_order())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("e", "ll")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 256 + i
    vocab["<|endoftext|>"] = 256 + len(merges)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab


def test_a_tiny_gpt2_vocabulary_keeps_its_ids(tmp_path):
    vocab = write_tiny_vocab(tmp_path)

    tok = load_gpt2_tokenizer_from(tmp_path)

    assert tok.encode(" the") == [vocab["Ġthe"]]
    assert tok.encode("yell") == [vocab["y"], vocab["ell"]]
    assert tok.encode("hell") == [vocab["he"], vocab["ll"]], "'he' (257) merges before 'ell' (260) could form"
    assert tok.encode("!") == [0] and tok.encode("\x00") == [188], "byte ids follow GPT-2's order, not byte order"
    assert tok.encode("<|endoftext|>", allowed_special="all") == [vocab["<|endoftext|>"]]
    assert tok.special_tokens == {"<|endoftext|>": 261} and tok.vocab_size == 262
    assert tok.decode(tok.encode("hello there\n")) == "hello there\n"


def test_a_bpe_tokenizer_exports_to_vocab_and_merges_and_back(tmp_path):
    text = "the cat sat on the mat; the dog sat on the log. " * 20
    tok = BPETokenizer.train(text, 300, pattern="gpt2", special_tokens=["<|endoftext|>"])

    save_gpt2_tokenizer(tok, tmp_path)
    back = load_gpt2_tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")

    assert back.to_tiktoken_ranks() == tok.to_tiktoken_ranks() and back.special_tokens == tok.special_tokens
    sample = "the cat sat on the log<|endoftext|> new words"
    assert back.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8")
    assert merges.startswith("#version: 0.2\n") and "\nĠ the\n" in merges, "a space is written as Ġ"


def test_merges_that_break_the_256_plus_i_rule_are_named(tmp_path):
    vocab = write_tiny_vocab(tmp_path)
    vocab["Ġt"], vocab["he"] = vocab["he"], vocab["Ġt"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt' merge 1 \(Ġ t\): makes 'Ġt', which should have id 256"):
        load_gpt2_tokenizer_from(tmp_path)


def tiktoken_encoding(vocab_bpe: Path, encoder_json: Path, **hashes):
    """tiktoken's gpt2 encoding built offline from local files (tiktoken_ext.openai_public.gpt2 with paths)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json), **hashes)
    return tiktoken.Encoding("gpt2-offline", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A tinyllm tokenizer trained with GPT-2's pattern and byte order, exported, and tiktoken on its files."""
    from tinyllm.data.text import builtin_corpus
    text = builtin_corpus()[:60_000]
    trained = BPETokenizer.train(text, 600, pattern="gpt2")
    order = gpt2_byte_order()
    new_id = {byte: i for i, byte in enumerate(order)}   # tiktoken's loader assumes GPT-2's byte ids
    merges = [tuple(new_id[t] if t < 256 else t for t in pair) for pair in trained.merges]
    tok = BPETokenizer.from_merges(merges, pattern="gpt2", special_tokens=["<|endoftext|>"], byte_order=order)
    directory = tmp_path_factory.mktemp("gpt2-files")
    vocab, merges_file = save_gpt2_tokenizer(tok, directory)
    return load_gpt2_tokenizer(vocab, merges_file), tiktoken_encoding(merges_file, vocab), text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("ab cdeth\n\t  '.,!?1é€😀")) | st.characters(), max_size=60))
def test_gpt2_tokenizer_files_encode_like_tiktoken(trained_pair, text):
    tok, enc, _ = trained_pair
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text), f"ids differ from tiktoken's on {text!r}"


def test_gpt2_tokenizer_files_encode_a_corpus_like_tiktoken(trained_pair):
    tok, enc, text = trained_pair
    assert tok.encode(text) == enc.encode_ordinary(text)


# ---------------------------------------------------------------------- OpenAI's real files
@pytest.fixture(scope="module")
def real_gpt2():
    if not (REAL_GPT2 / "encoder.json").exists() or not (REAL_GPT2 / "vocab.bpe").exists():
        pytest.skip(f"OpenAI's GPT-2 tokenizer files are not in {REAL_GPT2}")
    return load_gpt2_tokenizer(REAL_GPT2 / "encoder.json", REAL_GPT2 / "vocab.bpe")


def test_the_real_gpt2_tokenizer_gives_gpt2s_ids(real_gpt2):
    assert real_gpt2.encode("Hello world") == [15496, 995]
    assert real_gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert real_gpt2.vocab_size == 50257


def test_the_real_gpt2_tokenizer_matches_tiktoken_on_shakespeare(real_gpt2):
    if not SHAKESPEARE.exists():
        pytest.skip(f"no {SHAKESPEARE}")
    enc = tiktoken_encoding(REAL_GPT2 / "vocab.bpe", REAL_GPT2 / "encoder.json",
                            vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                            encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    real_gpt2.clear_cache()

    started = time.perf_counter()
    ids = real_gpt2.encode(text)
    seconds = time.perf_counter() - started

    assert ids == enc.encode_ordinary(text), "tinyllm's GPT-2 tokenizer disagrees with tiktoken's gpt2 on Shakespeare"
    print(f"\nGPT-2 tokenizer: {len(text.encode()) / seconds / 1e6:.2f} MB/s ({len(ids):,} tokens in {seconds:.2f}s)")


def test_the_real_gpt2_files_export_back_unchanged(real_gpt2, tmp_path):
    save_gpt2_tokenizer(real_gpt2, tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == \
        json.loads((REAL_GPT2 / "encoder.json").read_text(encoding="utf-8"))
    ours = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    theirs = (REAL_GPT2 / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    assert [line for line in ours if line] == [line for line in theirs if line]


# ====================================================================== the CLI
def test_import_hf_and_export_hf_round_trip_through_a_run_directory(tmp_path, capsys):
    config = hf_config(vocab_size=262)
    tensors = random_hf_tensors(config)
    hf_dir = write_hf_dir(tmp_path / "hf", config, tensors)
    write_tiny_vocab(hf_dir)

    assert cli_main(["import-hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    model, tok = load_pretrained(tmp_path / "run")
    assert tok.encode(" the") == [258]
    np.testing.assert_allclose(logits_of(model, IDS), gpt2_logits_numpy(config, tensors, IDS), atol=2e-4, rtol=1e-4)

    assert cli_main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf2")]) == 0
    assert {p.name for p in (tmp_path / "hf2").iterdir()} == {"config.json", "model.safetensors", "vocab.json",
                                                              "merges.txt", "tinyllm_tokenizer.json"}
    exported = load_file(tmp_path / "hf2" / "model.safetensors")
    for name, array in tensors.items():
        if not name.endswith(("attn.bias", "attn.masked_bias")):
            np.testing.assert_array_equal(exported[name], array, err_msg=name)
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["eos_token_id"] == 261
    assert load_gpt2_tokenizer_from(tmp_path / "hf2").encode("hello the") == tok.encode("hello the")


def test_import_hf_refuses_to_overwrite_a_run(tmp_path, capsys):
    config = hf_config()
    hf_dir = write_hf_dir(tmp_path / "hf", config, random_hf_tensors(config))
    save_model(tmp_path / "run", GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)))
    assert cli_main(["import-hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 2
    assert "already holds a model" in capsys.readouterr().err


def test_import_hf_keeps_another_layer_norm_epsilon_in_the_run_directory(tmp_path):
    config = hf_config(layer_norm_epsilon=1e-6)
    hf_dir = write_hf_dir(tmp_path / "hf", config, random_hf_tensors(config))
    assert cli_main(["import-hf", str(hf_dir), "--out", str(tmp_path / "run")]) == 0
    model, _ = load_pretrained(tmp_path / "run")
    assert model.config.norm_eps == 1e-6, "the run directory must record GPT-2's epsilon"
    assert all(m.eps == 1e-6 for _, m in model.named_modules() if hasattr(m, "eps"))


def test_export_refuses_a_llama_style_model(tmp_path):
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8, norm="rmsnorm", pos="rope"))
    with pytest.raises(ValueError, match="only GPT-2-style models.*norm='rmsnorm'.*pos='rope'"):
        save_hf_gpt2(model, tmp_path / "hf")


# ====================================================================== transformers (optional)
def test_logits_match_transformers_gpt2_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=96, eos_token_id=96)).eval()
    with torch.no_grad():                     # HF initialises biases and norms trivially; make them matter
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 24))

    hf_model.save_pretrained(tmp_path / "from-hf", safe_serialization=True)
    ours = load_hf_gpt2(tmp_path / "from-hf")
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits_of(ours, ids), expected, atol=1e-4, err_msg="HF → tinyllm")

    for tie in (True, False):
        model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32, tie_weights=tie), seed=1)
        save_hf_gpt2(model, tmp_path / f"to-hf-{tie}")
        back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / f"to-hf-{tie}", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            theirs = back.eval()(torch.tensor(ids)).logits.numpy()
        np.testing.assert_allclose(theirs, logits_of(model, ids), atol=1e-4, err_msg=f"tinyllm → HF (tied={tie})")


def test_exported_tokenizer_files_encode_alike_in_transformers(trained_pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok, _, text = trained_pair
    save_gpt2_tokenizer(tok, tmp_path)
    hf_tokenizer = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    sample = text[:5000] + " Ünïcödé 😀 and   spaces\n\n"
    assert hf_tokenizer.encode(sample) == tok.encode(sample), "HF's merge-order BPE disagrees with tinyllm's"
