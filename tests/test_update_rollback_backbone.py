"""A failed update on a pretrained backbone rolls back without copying the frozen encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo import Updater
from ricordo.errors import TrainingDivergedError


def test_snapshot_shares_the_frozen_encoder_and_a_failed_update_restores(
    tiny_vit_path: str,
) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((16, 3, 32, 32), dtype=np.float32)
    y = np.repeat(np.arange(2), 8)
    updater = Updater(method="er", backbone=tiny_vit_path, epochs=1, batch_size=8, progress=False)
    updater.update(x, y)
    model = updater.model
    assert model is not None

    snapshot_model = updater._snapshot()[0]
    encoder_weights = dict(model.encoder.named_parameters())
    for name, copied in snapshot_model.encoder.named_parameters():
        assert copied is encoder_weights[name], name  # shared, not copied
    assert snapshot_model.head.weight is not model.head.weight  # the trained part is copied

    before = updater.predict_logits(x)
    head_before = model.head.weight.detach().clone()
    with pytest.raises(TrainingDivergedError):
        updater.update(x * 1e6, y, lr=1e9)
    assert torch.equal(updater.predict_logits(x), before)
    assert torch.equal(updater.model.head.weight, head_before)
    assert updater.updates == 1


def test_a_trainable_backbone_is_copied_in_the_snapshot(
    minilm_path: str, topic_texts: Callable[..., tuple[np.ndarray, np.ndarray]]
) -> None:
    texts, labels = topic_texts((0, 1), 8, 0)
    updater = Updater(
        method="finetune",
        backbone=minilm_path,
        train_backbone=True,
        max_length=8,
        epochs=1,
        batch_size=8,
        progress=False,
    )
    updater.update(list(texts), labels)
    model = updater.model
    assert model is not None
    snapshot_model = updater._snapshot()[0]
    live = dict(model.encoder.named_parameters())
    assert all(p is not live[n] for n, p in snapshot_model.encoder.named_parameters())


def test_benchmark_state_size_counts_what_save_writes_not_the_frozen_encoder(
    tiny_vit_path: str, tmp_path: Path
) -> None:
    from ricordo.bench.runner import state_nbytes
    from ricordo.state import read_state

    rng = np.random.default_rng(1)
    x = rng.random((16, 3, 32, 32), dtype=np.float32)
    y = np.repeat(np.arange(2), 8)
    updater = Updater(
        method="finetune", backbone=tiny_vit_path, epochs=1, batch_size=8, progress=False
    )
    updater.update(x, y)
    updater.save(str(tmp_path / "v0"))
    written = read_state(str(tmp_path / "v0")).files["model.safetensors"]
    head_bytes = sum(t.nbytes for t in updater.model.head.state_dict().values())
    assert state_nbytes(updater) == head_bytes
    assert len(written) < 4 * head_bytes + 4096  # safetensors header + the head only
