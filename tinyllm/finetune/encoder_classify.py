"""Classification with an encoder: the classifier reads the [CLS] position, BERT's way.

    ids (B, T), right-padded ──frame──► [CLS] ids [SEP] [PAD]… ──Encoder (padding mask)──► (B, T+2, C)
    hidden[:, 0] ──pooler (dense + tanh)──► (B, C) ──classifier──► (B, K)

A GPT classifier must read the *last* real token (``classify.py``): only it has seen the whole text.
In an encoder every position sees every other one, so any position could serve; BERT reserves [CLS]
at the start for it, and pretraining with a pooler on [CLS] makes that position a summary of the
text. Padding is hidden by the attention mask (unlike in a causal model, real positions would
otherwise attend to it).

``EncoderClassifier`` takes the same (ids, lengths, labels) as ``GPTClassifier`` (the texts' own
tokens, without [CLS]/[SEP]), so ``train_classifier``, ``predict`` and ``classification_report``
serve both.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import array_of
from ..encoder import Encoder, EncoderConfig


class EncoderClassifier(Encoder):
    """An ``Encoder`` whose output is ``num_classes`` scores per text, read off [CLS] (through the
    pooler)."""

    def __init__(self, config: EncoderConfig, num_classes: int, label_names=None, seed: int = 0):
        super().__init__(config, seed)
        self._add_head(num_classes, label_names, seed)

    @classmethod
    def from_encoder(cls, encoder: Encoder, num_classes: int, label_names=None, seed: int = 0):
        """A classifier sharing ``encoder``'s parameters (no copy), with a fresh head."""
        model = cls.__new__(cls)
        model.__dict__.update(vars(encoder))
        model._add_head(num_classes, label_names, seed)
        return model

    def _add_head(self, num_classes, label_names, seed):
        from .classify import GPTClassifier
        if self.config.cls_token_id is None or self.config.sep_token_id is None:
            raise ValueError("this encoder's config names no [CLS]/[SEP] ids (cls_token_id, "
                             "sep_token_id), so texts cannot be framed for it; pretrain it with a "
                             "WordPiece tokenizer")
        # the same head: Linear(C, K)
        GPTClassifier._add_head(self, num_classes, label_names, seed)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def frame(self, idx, lengths):
        """Right-padded text ids (B, T) → ([CLS] text [SEP] [PAD]… ids (B, T'), attention mask (B,
        T')), texts cut to fit the context with their two special tokens (T' ≤ block_size)."""
        idx, lengths = backend.to_numpy(idx), backend.to_numpy(lengths)
        keep = np.minimum(lengths, self.config.block_size - 2)
        width = int(keep.max()) + 2
        framed = np.full((len(idx), width), self.config.pad_token_id, dtype=np.int64)
        framed[:, 0] = self.config.cls_token_id
        for row, n in enumerate(keep):
            framed[row, 1:n + 1] = idx[row, :n]
            framed[row, n + 1] = self.config.sep_token_id
        mask = np.arange(width)[None, :] < (keep + 2)[:, None]
        return framed, mask

    def forward(self, idx, lengths=None, labels=None):
        """idx (B, T) right-padded ids, lengths (B,) (default: all T) → (logits (B, K), mean
        cross-entropy against ``labels`` or None)."""
        idx = backend.to_numpy(array_of(idx))
        lengths = np.full(len(idx), idx.shape[1]) if lengths is None else lengths
        framed, mask = self.frame(idx, lengths)
        # (B, K)
        logits = self.classifier(self.pooled(self.hidden_states(framed, attention_mask=mask)))
        loss = None if labels is None else F.cross_entropy(logits, backend.xp.asarray(labels))
        return logits, loss
