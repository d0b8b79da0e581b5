"""Batched evaluation: accuracy and cross-entropy, robust to labels the model has never seen."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.data.dataset import ArrayDataset
from ricordo.data.lazy import LazyDataset, batches_in_order


@torch.no_grad()
def evaluate_logits(
    predict: Callable[[Tensor], Tensor],
    data: ArrayDataset | LazyDataset,
    batch_size: int,
    device: torch.device,
    model: nn.Module,
    *,
    classes: Sequence[int] | None = None,
    known_classes: Sequence[int] | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """Accuracy and mean loss of ``predict`` (x -> logits) on ``data``, with the row counts.

    A row whose label the model has never been trained on (not in ``known_classes``; by default,
    a label beyond the model's outputs) counts as an error and is left out of the loss, so
    unseen chunks can be evaluated (forward transfer needs them). ``classes`` restricts the
    prediction to those classes (the other logits are set to -inf, as in task-incremental
    evaluation); labels outside them count as errors and are left out of the loss too.

    Returns ``accuracy`` (over all ``samples`` rows), ``loss`` (mean over the ``loss_samples``
    rows in it; NaN if none) and ``unseen_label_rows``; without ``classes``,
    ``samples == loss_samples + unseen_label_rows``. A lazy ``data`` is read in order by a
    DataLoader with ``workers`` processes, untransformed.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, loss_count, unseen = 0, 0.0, 0, 0
    for rows, labels in batches_in_order(data, batch_size, workers=workers):
        # Inputs follow the model's dtype (a bf16-true model gets bf16 inputs).
        x = rows.to(device)
        if x.is_floating_point():  # integer inputs (token ids of a text backbone) stay so
            x = x.to(input_dtype(model))
        y = labels.to(device)
        logits = predict(x).float()
        outputs = logits.shape[1]
        known = y < outputs
        if known_classes is not None:
            trained = torch.zeros(outputs, dtype=torch.bool, device=logits.device)
            trained[[int(c) for c in known_classes if 0 <= int(c) < outputs]] = True
            known = known & trained[y.clamp(0, outputs - 1)]
        unseen += int((~known).sum())
        if classes is not None:
            allowed = torch.zeros(outputs, dtype=torch.bool, device=logits.device)
            ids = [int(c) for c in classes if 0 <= int(c) < outputs]
            allowed[ids] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
            if not ids:  # every logit is -inf: no prediction can be right
                continue
            known = known & allowed[y.clamp(0, outputs - 1)]
        # Rows of classes the model never learnt are wrong, whatever their untrained column says.
        hit = logits.argmax(1) == y
        if known_classes is not None:
            hit = hit & trained[y.clamp(0, outputs - 1)]
        correct += int(hit.sum())
        if bool(known.any()):
            loss_sum += float(F.cross_entropy(logits[known], y[known], reduction="sum"))
            loss_count += int(known.sum())
    model.train(was_training)
    return {
        "accuracy": correct / max(1, len(data)),
        "loss": loss_sum / loss_count if loss_count else float("nan"),
        "samples": float(len(data)),
        "loss_samples": loss_count,
        "unseen_label_rows": unseen,
    }


def input_dtype(model: nn.Module) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
