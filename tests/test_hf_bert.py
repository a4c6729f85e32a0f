"""BERT interop: a random transformers BertForMaskedLM / BertModel imported gives the same logits, and the
export loads back in transformers with the same logits."""

from __future__ import annotations

import numpy as np
import pytest

from tinyllm import backend, no_grad
from tinyllm.cli import main
from tinyllm.encoder import Encoder, EncoderConfig
from tinyllm.interop.hf_bert import load_hf_bert, save_hf_bert
from tinyllm.tokenizer import WordPieceTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", ".", "a"]


def hf_bert(cls=None, **overrides):
    config = transformers.BertConfig(**{**dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=48, max_position_embeddings=24,
                                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                                        **overrides})
    torch.manual_seed(0)
    return (cls or transformers.BertForMaskedLM)(config).eval()


def batch():
    rng = np.random.default_rng(0)
    ids, types = rng.integers(0, 40, (3, 11)), rng.integers(0, 2, (3, 11))
    mask = np.ones((3, 11), dtype=np.int64)
    mask[1, 8:], mask[2, 4:] = 0, 0
    return ids, types, mask


def hf_logits(model, ids, types, mask, hidden=False):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))
    return (out.last_hidden_state if hidden else out.logits).numpy()


def test_import_gives_bert_for_masked_lm_logits_and_export_loads_back(tmp_path):
    hf = hf_bert()
    hf.save_pretrained(tmp_path / "hf")
    WordPieceTokenizer(VOCAB).save_vocab(tmp_path / "hf" / "vocab.txt")
    model, tokenizer = load_hf_bert(tmp_path / "hf")
    assert not model.fresh_head and tokenizer.vocab_size == len(VOCAB) and model.config.cls_token_id == 2
    ids, types, mask = batch()
    real = mask.astype(bool)
    with no_grad():
        ours = model(ids, token_types=types, attention_mask=mask)[0].numpy()
    reference = hf_logits(hf, ids, types, mask)
    assert np.abs(ours - reference)[real].max() < 1e-5

    save_hf_bert(model, tmp_path / "out", tokenizer)
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(hf_logits(back, ids, types, mask) - ours)[real].max() < 1e-5
    fast = transformers.BertTokenizerFast.from_pretrained(tmp_path / "out")
    assert fast("the cats sat")["input_ids"] == tokenizer.encode_pair("the cats sat")[0]


def test_bert_model_with_pooler_and_tanh_gelu(tmp_path):
    hf = hf_bert(transformers.BertModel, hidden_act="gelu_new")
    hf.save_pretrained(tmp_path / "hf")
    model, tokenizer = load_hf_bert(tmp_path / "hf")
    assert model.fresh_head and tokenizer is None and model.config.activation == "gelu_tanh"
    ids, types, mask = batch()
    with no_grad():
        hidden = model.hidden_states(ids, types, mask)
        pooled = model.pooled(hidden).numpy()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    assert np.abs(hidden.numpy() - out.last_hidden_state.numpy())[real].max() < 1e-5
    assert np.abs(pooled - out.pooler_output.numpy()).max() < 1e-5
    save_hf_bert(model, tmp_path / "out")
    back = transformers.BertModel.from_pretrained(tmp_path / "out").eval()
    assert np.abs(hf_logits(back, ids, types, mask, hidden=True) - hidden.numpy())[real].max() < 1e-5


def test_unsupported_configs_are_refused(tmp_path):
    hf = hf_bert(position_embedding_type="relative_key")
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not supported"):
        load_hf_bert(tmp_path / "hf")
    with pytest.raises(ValueError, match="only post-LN encoders"):
        save_hf_bert(Encoder(EncoderConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8, norm="pre")),
                     tmp_path / "pre")


def test_cli_import_and_export_a_bert_run(tmp_path, capsys):
    hf_bert().save_pretrained(tmp_path / "hf")
    WordPieceTokenizer(VOCAB).save_vocab(tmp_path / "hf" / "vocab.txt")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "encoder" in capsys.readouterr().out
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids, types, mask = batch()
    assert np.abs(hf_logits(back, ids, types, mask) - hf_logits(hf_bert(), ids, types, mask)).max() < 1e-5


def test_mlm_loss_and_gradients_equal_transformers(tmp_path):
    # One masked batch through both implementations of the same weights: the loss and every gradient agree,
    # so training an encoder here takes the steps transformers would take.
    from tinyllm.interop.hf_bert import tinyllm_to_hf_state
    from tinyllm.mlm import mask_tokens
    model = Encoder(EncoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, pooler=False), seed=0)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():                # away from the init, so no gradient is near zero
        p.data[...] += backend.asarray(rng.normal(0, 0.1, p.shape).astype(np.float32))
    save_hf_bert(model, tmp_path / "hf")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    x, y = mask_tokens(rng.integers(5, 50, (4, 16)), rng, 50, 4, [0, 1, 2, 3, 4])
    loss = model(x, y)[1]
    loss.backward()
    reference = hf(input_ids=torch.tensor(x), labels=torch.tensor(y))
    reference.loss.backward()
    assert loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)

    class Grads:                                        # the gradients under HF names, as the export names weights
        def state_dict(self):
            return {name: p.grad for name, p in model.named_parameters()}

    ours = tinyllm_to_hf_state(Grads())
    theirs = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    for name, grad in theirs.items():
        assert np.abs(ours[name] - grad).max() <= 1e-5 * max(1.0, np.abs(grad).max()), name
