"""Running a graph written by ``onnx_export`` in onnxruntime, fed the way ``tinyllm.generate`` feeds
the model, and comparing its logits with tinyllm's (what ``tinyllm export-onnx`` does after writing
the file).

    session = onnxruntime_session("model.onnx")
    logits, present = run_onnx(session, prompt_ids)                    # prefill: the past is empty
    logits, present = run_onnx(session, next_ids, past=present)        # one decode step

``onnxruntime`` is needed only here (``pip install onnxruntime``); nothing else in tinyllm imports
it.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..model import GPT


def onnxruntime_session(path):
    """An onnxruntime ``InferenceSession`` of an exported file on the CPU (RuntimeError when not
    installed)."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("running an ONNX file needs onnxruntime: pip install "
                           "onnxruntime") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session, ids, attention_mask=None, past=None):
    """(logits (B, T, V), present) from a session of an exported graph, fed as ``tinyllm.generate``
    feeds the model: ``ids`` (B, T); ``attention_mask`` (B, P + T) of 1s and 0s (all 1s by default);
    position_ids counted from each row's first real token. ``past``: a list of (keys, values) per
    layer, the ``present`` of the call before (empty by default); ``present`` is None for a graph
    without a cache."""
    ids = np.asarray(ids, dtype=np.int64)
    cached = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if cached and past is None:
        dtype = np.float16 if cached[0].type == "tensor(float16)" else np.float32
        empty = np.zeros((ids.shape[0], cached[0].shape[1], 0, cached[0].shape[3]), dtype=dtype)
        past = [(empty, empty)] * (len(cached) // 2)
    past_length = past[0][0].shape[2] if cached else 0
    if attention_mask is None:
        attention_mask = np.ones((ids.shape[0], past_length + ids.shape[1]), dtype=np.int64)
    attention_mask = np.asarray(attention_mask, dtype=np.int64)
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)[:, past_length:]
    feed = {"input_ids": ids, "attention_mask": attention_mask, "position_ids": positions}
    for i, (keys, values) in enumerate(past if cached else []):
        feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = keys, values
    logits, *present = session.run(None, feed)
    return logits, (list(zip(present[0::2], present[1::2])) if cached else None)


def compare_with_onnxruntime(model: GPT, session, tokens: int = 8, seed: int = 0) -> tuple[float,
                                                                                           float]:
    """(largest |logit difference|, largest |logit|) between tinyllm and the session on ``tokens``
    random
    tokens: in one call for a graph without a cache; with one, a prefill of all but the last token
    and then one decode step fed the prefill's present keys and values."""
    from ..autograd import no_grad
    tokens = min(tokens, model.config.block_size)
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (1, tokens))
    model.eval()
    with no_grad():
        expected = backend.to_numpy(model(ids)[0].data).astype(np.float64)               # (1, T, V)
    if any(i.name.startswith("past_key_values.") for i in session.get_inputs()) and tokens > 1:
        prefill, present = run_onnx(session, ids[:, :-1])
        step, _ = run_onnx(session, ids[:, -1:], past=present)
        got = np.concatenate([prefill, step], axis=1)
    else:
        got = run_onnx(session, ids)[0]
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())
