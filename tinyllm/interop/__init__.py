"""Interop: Hugging Face checkpoints (GPT-2, Llama family) and GPT-2's tokenizer files, in and out
of tinyllm; ONNX graphs out.

- ``hf_gpt2.py``: ``load_hf_gpt2(dir)`` → a tinyllm ``GPT`` that computes what ``GPT2LMHeadModel``
  does; ``save_hf_gpt2(model, dir)`` writes a directory ``GPT2LMHeadModel.from_pretrained`` loads.
- ``gpt2_tokenizer.py``: ``vocab.json`` + ``merges.txt`` ↔ ``BPETokenizer`` with GPT-2's ids.
- ``hf_llama.py``: ``load_hf_llama(dir)`` / ``save_hf_llama(model, dir)`` for Llama, Qwen2, Mistral
  and Mixtral (their ``tokenizer.json`` is ``tinyllm.tokenizer.HFBPETokenizer``).
- ``onnx_export.py``: ``export_onnx(model, path)`` writes the forward as an ONNX graph (needs the
  ``onnx`` package); ``onnx_run.py`` runs such a file in onnxruntime and compares it with tinyllm.

Only safetensors and JSON are read: no pickle, no torch, no transformers.
"""

from .gpt2_tokenizer import (
    bytes_to_unicode,
    find_tokenizer_files,
    load_gpt2_tokenizer,
    load_gpt2_tokenizer_from,
    save_gpt2_tokenizer,
)
from .hf_gpt2 import config_from_hf, hf_config_from, load_hf_gpt2, save_hf_gpt2

__all__ = [
    "bytes_to_unicode",
    "config_from_hf",
    "find_tokenizer_files",
    "hf_config_from",
    "load_gpt2_tokenizer",
    "load_gpt2_tokenizer_from",
    "load_hf_gpt2",
    "save_gpt2_tokenizer",
    "save_hf_gpt2",
]
