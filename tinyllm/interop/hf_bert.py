"""BERT weights in Hugging Face's layout (``BertForMaskedLM`` / ``BertModel``), read into a tinyllm
``Encoder`` and written back out, with BERT's ``vocab.txt``.

tinyllm's encoder with ``norm="post"`` and ``activation="gelu"`` computes what HF's BERT computes;
moving weights is renaming plus one concatenation: HF keeps three Linear layers ``query``, ``key``,
``value`` where tinyllm has one ``qkv`` whose rows are [queries | keys | values] (the same heads
side by side), so

    qkv.weight (3C, C) = concat(query.weight, key.weight, value.weight)       (both store (out, in))

The names (``bert.`` in front for BertForMaskedLM, none for BertModel):

    HF name                                              tinyllm name
    embeddings.word_embeddings.weight        (V, C)      wte.weight
    embeddings.position_embeddings.weight    (T, C)      wpe.weight
    embeddings.token_type_embeddings.weight  (2, C)      wtype.weight
    embeddings.LayerNorm.{weight,bias}                   ln_emb.{weight,bias}
    encoder.layer.{i}.attention.self.{query,key,value}   blocks.{i}.attn.qkv        (concatenated)
    encoder.layer.{i}.attention.output.dense             blocks.{i}.attn.proj
    encoder.layer.{i}.attention.output.LayerNorm         blocks.{i}.ln_1
    encoder.layer.{i}.intermediate.dense                 blocks.{i}.mlp.fc
    encoder.layer.{i}.output.dense                       blocks.{i}.mlp.proj
    encoder.layer.{i}.output.LayerNorm                   blocks.{i}.ln_2
    pooler.dense                                         pooler                    (BertModel only)
    cls.predictions.transform.dense                      mlm.dense                 (BertForMaskedLM only)
    cls.predictions.transform.LayerNorm                  mlm.ln
    cls.predictions.bias                     (V,)        mlm.bias
    cls.predictions.decoder.weight                       (tied to wte: not stored)

A ``BertModel`` has no MLM head: imported, its head starts fresh (zero bias, N(0, 0.02²) dense) and
the run says so. ``embeddings.position_ids`` (a buffer) is skipped. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import backend
from ..encoder import Encoder, EncoderConfig
from ..files import atomic_write_json, read_json
from ..safetensors import save_file
from .hf_gpt2 import HF_CONFIG, HF_WEIGHTS, read_hf_tensors

VOCAB = "vocab.txt"
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_LAYER = {"attention.output.dense": "attn.proj", "attention.output.LayerNorm": "ln_1",
          "intermediate.dense": "mlp.fc", "output.dense": "mlp.proj", "output.LayerNorm": "ln_2"}
_TOP = {"embeddings.word_embeddings": "wte", "embeddings.position_embeddings": "wpe",
        "embeddings.token_type_embeddings": "wtype", "embeddings.LayerNorm": "ln_emb",
        "pooler.dense": "pooler", "cls.predictions.transform.dense": "mlm.dense",
        "cls.predictions.transform.LayerNorm": "mlm.ln"}


def config_from_hf(hf: dict, where: str = HF_CONFIG, has_pooler: bool = True) -> EncoderConfig:
    """The EncoderConfig of a HF BERT ``config.json`` dict;
    ValueError naming what tinyllm cannot compute."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}; only 'bert' encoders "
                         "can be imported here")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"{where}: hidden_act {act!r} is not supported (tinyllm has "
                         f"{', '.join(_ACTIVATIONS)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{where}: position_embedding_type {hf['position_embedding_type']!r} is "
                         "not supported "
                         "(tinyllm's encoder learns absolute positions)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    try:
        return EncoderConfig(vocab_size=hf["vocab_size"],
                             block_size=hf.get("max_position_embeddings", 512),
                             n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                             n_embd=hf["hidden_size"], mlp_hidden=hf.get("intermediate_size"),
                             type_vocab_size=hf.get("type_vocab_size",
                                                    2), activation=_ACTIVATIONS[act],
                             norm_eps=float(hf.get("layer_norm_eps", 1e-12)), pooler=has_pooler,
                             pad_token_id=hf.get("pad_token_id", 0) or 0)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def hf_config_from(config: EncoderConfig, with_pooler: bool) -> dict:
    """The ``config.json`` for ``BertForMaskedLM`` (or ``BertModel`` with the pooler)
    of this shape."""
    if config.norm != "post":
        raise ValueError("only post-LN encoders (norm='post') have BERT's layout; "
                         "this one is pre-LN")
    act = "gelu" if config.activation == "gelu" else "gelu_pytorch_tanh"
    return {"architectures": ["BertModel" if with_pooler else "BertForMaskedLM"],
            "model_type": "bert",
            "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "intermediate_size": config.hidden_size,
            "hidden_act": act,
            "max_position_embeddings": config.block_size, "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.norm_eps, "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.dropout, "initializer_range": 0.02,
            "position_embedding_type": "absolute", "pad_token_id": config.pad_token_id,
            "tie_word_embeddings": True, "torch_dtype": "float32"}


def tinyllm_name(hf: str) -> str | None:
    """HF name (no ``bert.`` prefix) → tinyllm name; None for q/k/v (concatenated)
    and skipped tensors."""
    if hf.startswith("encoder.layer."):
        _, _, index, rest = hf.split(".", 3)
        layer, param = rest.rsplit(".", 1)
        if layer.startswith("attention.self."):
            return None
        if layer not in _LAYER:
            raise ValueError(f"tensor {hf!r} is not part of a BERT layer tinyllm knows")
        return f"blocks.{index}.{_LAYER[layer]}.{param}"
    if hf == "cls.predictions.bias":
        return "mlm.bias"
    module, param = hf.rsplit(".", 1)
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    if hf in ("embeddings.position_ids", "cls.predictions.decoder.weight",
              "cls.predictions.decoder.bias"):
        # a buffer, and the tied decoder (= wte, bias = mlm.bias)
        return None
    raise ValueError(f"tensor {hf!r} is not part of BertForMaskedLM or BertModel")


def hf_to_tinyllm_state(tensors: dict, config: EncoderConfig) -> dict:
    state, qkv = {}, {}
    for name, array in tensors.items():
        short = name[len("bert."):] if name.startswith("bert.") else name
        if array.dtype.kind != "f":
            if short == "embeddings.position_ids":
                continue
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; weights must be "
                             "floating point")
        target = tinyllm_name(short)
        if target is not None:
            state[target] = np.ascontiguousarray(array, dtype=backend.dtype)
        elif ".attention.self." in short:
            index, part = short.split(".")[2], short.rsplit(".", 2)[-2:]
            qkv.setdefault((index, part[1]), {})[part[0]] = array
    for (index, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {index}: attention {param} has {sorted(parts)}, needs "
                             "query, key and value")
        stacked = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
        state[f"blocks.{index}.attn.qkv.{param}"] = np.ascontiguousarray(stacked,
                                                                         dtype=backend.dtype)
    return state


def load_hf_bert(path, dtype=None):
    """(Encoder, WordPieceTokenizer or None) from a HF BERT directory (config.json +
    model.safetensors [+ vocab.txt, + tokenizer_config.json for the casing]). A ``BertModel`` has no
    MLM head: the encoder's starts untrained and ``model.fresh_head`` is True. Any other missing or
    unknown tensor is an error."""
    directory = Path(path)
    if not (directory / HF_CONFIG).exists():
        raise ValueError(f"'{directory}' has no {HF_CONFIG}, so it is not a Hugging Face "
                         "model directory")
    hf = read_json(directory / HF_CONFIG, what="Hugging Face config")
    tensors, _ = read_hf_tensors(directory)
    has_pooler = any(n.endswith("pooler.dense.weight") for n in tensors)
    config = config_from_hf(hf, str(directory / HF_CONFIG), has_pooler)
    tokenizer = None
    if (directory / VOCAB).exists():
        from ..tokenizer import WordPieceTokenizer
        lowercase = bool(_tokenizer_config(directory).get("do_lower_case", True))
        tokenizer = WordPieceTokenizer.from_vocab_file(directory / VOCAB, lowercase=lowercase)
        config = _with_specials(config, tokenizer)
    with backend.default_dtype(dtype or backend.dtype):
        state = hf_to_tinyllm_state(tensors, config)
        model = Encoder(config)
        params = dict(model.named_parameters())
        unexpected = sorted(set(state) - set(params))
        missing = sorted(set(params) - set(state))
        if unexpected or [m for m in missing if not m.startswith("mlm.")]:
            raise ValueError(f"{directory / HF_WEIGHTS}: does not fit a BERT with "
                             "this config.json: "
                             f"missing {missing[:4]}, unexpected {unexpected[:4]}")
        model.load_state_dict(state, strict=False)          # shapes are still checked
    model.fresh_head = bool(missing)
    return model.eval(), tokenizer


def _tokenizer_config(directory: Path) -> dict:
    file = directory / "tokenizer_config.json"
    return read_json(file, what="tokenizer config") if file.exists() else {}


def _with_specials(config, tokenizer):
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"vocab.txt has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.vocab_size} rows")
    return dataclasses.replace(config, cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id,
                               pad_token_id=tokenizer.pad_id)


def tinyllm_to_hf_state(model) -> dict:
    """The encoder's weights under ``BertForMaskedLM`` names (plus the pooler's,
    when it has one)."""
    inverse = {f"{v}.": k for k, v in _TOP.items()}
    state = {}
    for name, array in model.state_dict().items():
        array = backend.to_numpy(array).astype(np.float32)
        parts = name.split(".")
        if parts[0] == "blocks":
            index, layer, param = parts[1], ".".join(parts[2:-1]), parts[-1]
            prefix = f"bert.encoder.layer.{index}."
            if layer == "attn.qkv":
                for j, part in enumerate(np.split(array, 3, axis=0)):
                    hf_name = f"{prefix}attention.self.{('query', 'key', 'value')[j]}.{param}"
                    state[hf_name] = np.ascontiguousarray(part)
                continue
            hf_layer = {v: k for k, v in _LAYER.items()}[layer]
            state[f"{prefix}{hf_layer}.{param}"] = array
        elif name == "mlm.bias":
            state["cls.predictions.bias"] = array
        else:
            module = next(k for k in inverse if name.startswith(k))
            hf = inverse[module] + name[len(module) - 1:]
            state[hf if hf.startswith("cls.") else "bert." + hf] = array
    return state


def save_hf_bert(model, directory, tokenizer=None) -> Path:
    """Write ``model`` as a HF BERT directory: config.json (BertForMaskedLM, or BertModel naming the
    pooler), model.safetensors (float32), and vocab.txt + tokenizer_config.json with a WordPiece
    tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = hf_config_from(model.config, with_pooler=False)
    if model.pooler is not None:
        hf["architectures"] = ["BertForMaskedLM", "BertModel"]
    save_file(tinyllm_to_hf_state(model), directory / HF_WEIGHTS, metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_vocab(directory / VOCAB)
        atomic_write_json(directory / "tokenizer_config.json",
                          {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                           "model_max_length": model.config.block_size})
    atomic_write_json(directory / HF_CONFIG, hf)
    return directory
