"""Embeddings of texts by the frozen base model, for ``design.units=cluster:K``: the mean over the tokens of the
last hidden layer (padding excluded), before any fine-tuning, so that clusters group texts the model already
sees as alike."""

from __future__ import annotations

import numpy as np
import torch

from dataspex.train.common import Encoded


@torch.no_grad()
def embed(model, encoded: Encoded, batch_size: int = 64) -> np.ndarray:
    """(n, hidden) float32: each sequence's mean last-layer hidden state under ``model`` (eval mode, no grad).

    Sequences are batched in length order (less padding), results returned in input order."""
    model.eval()
    order = np.argsort([len(s) for s in encoded.input_ids], kind="stable")
    out = np.zeros((len(encoded), 0), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = encoded.batch(rows.tolist())
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)).float().numpy()
        if out.shape[1] == 0:
            out = np.zeros((len(encoded), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled
    return out
