"""Tests of tinyllm.checkpoint: a saved model comes back identical, a damaged or hostile file is refused with
a message naming it (and never runs code), a mismatch is reported by name, and a crash while saving never
destroys the previous checkpoint."""

import io
import json
import pickle
import shutil

import numpy as np
import pytest

import tinyllm.safetensors as safetensors_module
import tinyllm.train as train_module
from tinyllm import backend, default_dtype
from tinyllm.autograd import no_grad
from tinyllm.checkpoint import (load_config, load_pretrained, load_train_state, load_weights, save_model,
                                save_train_state)
from tinyllm.data.tokens import split_train_val
from tinyllm.model import GPT, GPTConfig
from tinyllm.optim import AdamW
from tinyllm.safetensors import load_metadata, read_header
from tinyllm.tokenizer import CharTokenizer
from tinyllm.train import TrainConfig, param_groups, pretrain

TEXT = "a small text to build a character vocabulary from: the quick brown fox jumps over the lazy dog."
TINY = dict(block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_model(tokenizer=None, **overrides):
    vocab = tokenizer.vocab_size if tokenizer is not None else 30
    return GPT(GPTConfig(**{**TINY, "vocab_size": vocab, **overrides}), seed=0)


def logits_of(model, ids):
    model.eval()
    with no_grad():
        return model(np.asarray(ids)[None])[0].numpy()


@pytest.fixture
def saved_run(tmp_path):
    """A run directory holding a tiny model (with dropout, untied head) and its character tokenizer."""
    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_model(tokenizer, dropout=0.1, tie_weights=False)
    save_model(tmp_path, model, tokenizer, step=7)
    return tmp_path, model, tokenizer


# ====================================================================== round trips
def test_a_saved_model_loads_back_with_identical_logits(saved_run):
    run_dir, model, tokenizer = saved_run
    ids = tokenizer.encode("the fox")

    loaded, loaded_tokenizer = load_pretrained(run_dir)

    assert loaded.config == model.config
    assert loaded_tokenizer.encode("the fox") == ids
    np.testing.assert_array_equal(logits_of(loaded, ids), logits_of(model, ids))


def test_the_run_directory_holds_readable_files(saved_run):
    run_dir, model, _ = saved_run

    config = load_config(run_dir)

    assert config["model"] == model.config.to_dict() and config["tokenizer"] == "tokenizer.json"
    assert load_metadata(run_dir / "model.safetensors")["step"] == "7"
    assert set(read_header(run_dir / "model.safetensors").tensors) == set(model.state_dict())


def test_loading_from_the_weights_file_itself_works_too(saved_run):
    run_dir, model, _ = saved_run

    loaded, _ = load_pretrained(run_dir / "model.safetensors")

    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(loaded.state_dict()[name]), backend.to_numpy(array))


def test_save_model_keeps_other_stages_config_keys(saved_run):
    run_dir, model, tokenizer = saved_run

    save_model(run_dir, model, tokenizer, step=8, extra_config={"finetune": {"lr": 1e-4}})
    save_model(run_dir, model, tokenizer, step=9)

    assert load_config(run_dir)["finetune"] == {"lr": 1e-4}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_round_trip_bit_for_bit_in_every_dtype(tmp_path, dtype):
    # Saved in the model's dtype and loaded back in it: no rounding on the way, whatever the default
    # dtype is at load time.
    with default_dtype(dtype):
        model = tiny_model()
        save_model(tmp_path, model)
    header = read_header(tmp_path / "model.safetensors")
    assert {info.dtype for info in header.tensors.values()} == {"F32" if dtype == "float32" else "F64"}

    loaded, tokenizer = load_pretrained(tmp_path)

    assert tokenizer is None
    for name, array in model.state_dict().items():
        restored = loaded.state_dict()[name]
        assert restored.dtype == array.dtype, f"{name} came back as {restored.dtype}, was saved as {array.dtype}"
        np.testing.assert_array_equal(backend.to_numpy(restored), backend.to_numpy(array), err_msg=name)


def test_a_dtype_can_be_asked_for_explicitly(tmp_path):
    model = tiny_model()                                  # float32
    save_model(tmp_path, model)

    widened, _ = load_pretrained(tmp_path, dtype="float64")

    assert widened.wte.weight.dtype == np.float64
    np.testing.assert_array_equal(widened.wte.weight.numpy(), model.wte.weight.numpy().astype(np.float64))


def test_the_train_state_round_trips(tmp_path):
    model = tiny_model()
    optimizer = AdamW(param_groups(model, 0.1))
    _, loss = model(np.zeros((2, 8), dtype=np.int64), np.ones((2, 8), dtype=np.int64))
    loss.backward()
    optimizer.step()
    save_model(tmp_path, model, step=1)
    save_train_state(tmp_path, optimizer, {"step": 1, "note": "anything JSON"})

    fresh = AdamW(param_groups(tiny_model(), 0.1))
    state = load_train_state(tmp_path, fresh)

    assert state == {"step": 1, "note": "anything JSON"}
    assert fresh.step_count == 1
    for saved, restored in zip(optimizer.exp_avg + optimizer.exp_avg_sq, fresh.exp_avg + fresh.exp_avg_sq):
        np.testing.assert_array_equal(backend.to_numpy(restored), backend.to_numpy(saved))


# ====================================================================== damaged and hostile files
def test_a_truncated_weights_file_is_refused_naming_it(saved_run):
    run_dir, _, _ = saved_run
    path = run_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])            # as after a copy that stopped early

    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .*truncated"):
        load_pretrained(run_dir)
    with pytest.raises(ValueError) as error:
        load_weights(tiny_model(), run_dir)
    assert str(error.value).count("model.safetensors") == 1, "the file should be named once"


def test_a_corrupted_header_is_refused_naming_the_file(saved_run):
    run_dir, _, _ = saved_run
    path = run_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\x00garbage{{{{!!!!"                   # the first bytes of the JSON header

    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=r"model\.safetensors is not a safetensors file: header is not"):
        load_pretrained(run_dir)


class CreatesAFile:
    """An object whose unpickling calls ``open(marker, "w")`` — any code could stand in its place."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_is_refused_and_never_executed(saved_run, tmp_path_factory):
    run_dir, _, _ = saved_run
    elsewhere = tmp_path_factory.mktemp("proof")
    pickle.loads(pickle.dumps(CreatesAFile(elsewhere / "proof"))).close()
    assert (elsewhere / "proof").exists(), "the payload must really run code when unpickled"
    marker = run_dir / "code-was-executed"
    (run_dir / "model.safetensors").write_bytes(pickle.dumps(CreatesAFile(marker)))

    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_pretrained(run_dir)

    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_weights_of_another_shape_are_reported_by_key(saved_run):
    # Weights of a 2-layer model, config edited to 3 layers: every missing tensor is named.
    run_dir, _, _ = saved_run
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["n_layer"] = 3
    (run_dir / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match=r"model\.safetensors: .*missing keys: blocks\.2\.attn\.proj\.bias, "
                                         r"blocks\.2\.attn\.proj\.weight, blocks\.2\.attn\.qkv\.bias"):
        load_pretrained(run_dir)


def test_weights_of_another_width_name_the_tensor_and_both_shapes(saved_run):
    run_dir, _, tokenizer = saved_run

    with pytest.raises(ValueError, match=r"shape mismatches: wte\.weight: checkpoint \(\d+, 16\) vs model \(\d+, 32\)"):
        load_weights(tiny_model(tokenizer, n_embd=32, tie_weights=False), run_dir)


def test_a_directory_without_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run config file at .*config\.json"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at '.*nowhere'"):
        load_pretrained(tmp_path / "nowhere")


# ====================================================================== crashes while saving
def tiny_training(run_dir, steps, **kwargs):
    ids = (np.arange(400) % 30).astype(np.uint16)
    train_ids, val_ids = split_train_val(ids, 0.2)
    config = TrainConfig(steps=steps, batch_size=2, eval_interval=2, eval_iters=1, sample_tokens=0, seed=0)
    return pretrain(tiny_model(), train_ids, val_ids, config, run_dir=run_dir, progress=False, **kwargs)


def test_a_save_dying_between_train_state_and_weights_keeps_the_previous_checkpoint(tmp_path,
                                                                                    monkeypatch):
    # pretrain writes the training state, then the weights, and renames both only once both are
    # written (files.written_together): dying in between leaves the step-2 checkpoint, resumable.
    real_save_model = train_module.save_model

    def crash_at_step_4(run_dir, model, tokenizer, step, *args):
        if step == 4:
            raise OSError("killed while saving")
        real_save_model(run_dir, model, tokenizer, step, *args)
    monkeypatch.setattr(train_module, "save_model", crash_at_step_4)
    with pytest.raises(OSError, match="killed while saving"):
        tiny_training(tmp_path, steps=6)
    monkeypatch.setattr(train_module, "save_model", real_save_model)

    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "a temp file left"
    assert tiny_training(tmp_path, steps=6, resume=True)["start_step"] == 2


def test_weights_and_train_state_of_different_steps_are_refused_on_resume(tmp_path):
    # Only a kill during the two renames themselves could still mix two checkpoints; resuming
    # detects it, since training the step-2 weights with step-4 moments would be a wrong model.
    tiny_training(tmp_path / "run", steps=2)
    tiny_training(tmp_path / "later", steps=4)
    state = "train_state.safetensors"
    shutil.copy(tmp_path / "later" / state, tmp_path / "run" / state)

    with pytest.raises(ValueError, match=r"model\.safetensors is from step 2 but train_state\.safetensors is from step 4"):
        tiny_training(tmp_path / "run", steps=6, resume=True)


def test_a_failed_weights_write_leaves_the_previous_file_intact(saved_run, monkeypatch):
    run_dir, model, tokenizer = saved_run
    path = run_dir / "model.safetensors"
    before = path.read_bytes()
    real_atomic_write_with = safetensors_module.atomic_write_with

    def disk_full_halfway(target, write):
        def write_half(file):
            buffer = io.BytesIO()
            write(buffer)
            file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(28, "No space left on device")
        real_atomic_write_with(target, write_half)
    monkeypatch.setattr(safetensors_module, "atomic_write_with", disk_full_halfway)
    changed = tiny_model(tokenizer, dropout=0.1, tie_weights=False)
    changed.wte.weight.data += 1.0

    with pytest.raises(OSError, match="No space left"):
        save_model(run_dir, changed, tokenizer, step=8)

    assert path.read_bytes() == before
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == [], "a temporary file was left behind"
    loaded, _ = load_pretrained(run_dir)
    np.testing.assert_array_equal(loaded.wte.weight.numpy(), model.wte.weight.numpy())
