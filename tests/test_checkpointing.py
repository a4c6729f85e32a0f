"""Gradient checkpointing: recomputing each block in the backward gives the gradients of the plain backward
(float64, to rounding), for full finetuning and for LoRA on frozen weights, and its op passes gradcheck."""

import numpy as np
import pytest

from tinyllm import backend
from tinyllm.autograd import Tensor
from tinyllm.checkpointing import checkpoint, enable_checkpointing
from tinyllm.lora import apply_lora
from tinyllm.model import GPT, preset
from tinyllm.testing import gradcheck


def _grads(model, ids, checkpointed):
    enable_checkpointing(model, checkpointed)
    model.zero_grad()
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    return loss.item(), {name: backend.to_numpy(p.grad).copy() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True])
def test_same_gradients_as_without_checkpointing(lora):
    with backend.default_dtype("float64"):
        model = GPT(preset("llama-nano", vocab_size=40, block_size=16, qkv_bias=True), seed=1).train()
        if lora:
            apply_lora(model, rank=2, seed=0)
            for p in model.parameters():          # LoRA B starts at zero: move it so every gradient is non-trivial
                if p.requires_grad:
                    p.data += backend.xp.asarray(0.05 * np.random.default_rng(0).standard_normal(p.shape))
        ids = np.random.default_rng(0).integers(0, 40, size=(2, 13))
        loss, plain = _grads(model, ids, False)
        loss_checkpointed, checkpointed = _grads(model, ids, True)
    assert loss_checkpointed == loss
    assert plain.keys() == checkpointed.keys() and (not lora or all("lora" in name for name in plain))
    for name in plain:
        np.testing.assert_allclose(checkpointed[name], plain[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_checkpoint_op_gradcheck():
    with backend.default_dtype("float64"):
        rng = np.random.default_rng(0)
        w = Tensor(backend.xp.asarray(rng.standard_normal((4, 4))), requires_grad=True)
        x = Tensor(backend.xp.asarray(rng.standard_normal((3, 4))), requires_grad=True)
        assert gradcheck(lambda x, w: checkpoint(lambda h: (h @ w).tanh() * h, x, [w]), [x, w]) < 1e-6


def test_refused_where_recomputation_would_differ():
    with pytest.raises(ValueError, match="dropout"):
        enable_checkpointing(GPT(preset("nano", vocab_size=20, dropout=0.1)))
    with pytest.raises(ValueError, match="mixture-of-experts"):
        enable_checkpointing(GPT(preset("moe-nano", vocab_size=20)))


def test_same_gradients_on_the_data_parallel_threads():
    """Finetuning runs forward and backward on one thread per core, each collecting its leaves' gradients in
    its own table: the recomputation's input must still get its gradient there (LoRA, frozen embeddings)."""
    from tinyllm.train import data_parallel_backward
    model = GPT(preset("llama-nano", vocab_size=40, block_size=16), seed=1).train()
    apply_lora(model, rank=2, seed=0)
    for p in model.parameters():
        if p.requires_grad:
            p.data += backend.xp.asarray(0.05 * np.random.default_rng(0).standard_normal(p.shape), dtype=p.dtype)
    ids = np.random.default_rng(0).integers(0, 40, size=(4, 9))
    grads = []
    for checkpointed in (False, True):
        enable_checkpointing(model, checkpointed)
        model.zero_grad()
        data_parallel_backward(lambda rows: model(rows[:, :-1], rows[:, 1:])[1], ids)
        grads.append({name: backend.to_numpy(p.grad).copy() for name, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)
