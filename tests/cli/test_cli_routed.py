"""The CLI with a routed-expert method ("color") on text chunks: update twice, then evaluate
with --task, which adds task identification to the accuracy line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN = ("--epochs", "2", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "8")
REVIEWS = {
    "films": (["the film was great", "the plot was lovely"], ["the film was awful"]),
    "food": (["the soup was great", "the pasta was lovely"], ["the pizza was awful"]),
}


def test_color_on_text_chunks_reports_task_identification(
    cli, minilm_path: str, tmp_path: Path
) -> None:
    for k, (positive, negative) in enumerate(REVIEWS.values()):
        np.savez(tmp_path / f"d{k}.npz", text=[*positive, *negative] * 4, y=[1, 1, 0] * 4)
    first = cli(
        "update", "--data", tmp_path / "d0.npz", "--next-state", tmp_path / "s0", "--method",
        "color", "--backbone", minilm_path, "--max-length", "8", "--threads", "1",
        "--no-progress", *TRAIN,
    )  # fmt: skip
    assert first.code == 0, first.err
    second = cli(
        "update", "--data", tmp_path / "d1.npz", "--state", tmp_path / "s0",
        "--next-state", tmp_path / "s1", "--no-progress", *TRAIN,
    )  # fmt: skip
    assert second.code == 0, second.err
    for k in (0, 1):
        result = cli(
            "evaluate", "--state", tmp_path / "s1", "--data", tmp_path / f"d{k}.npz", "--task", k
        )
        assert result.code == 0, result.err
        assert result.out.strip().endswith("task identification 1.0000"), result.out
    plain = cli("evaluate", "--state", tmp_path / "s1", "--data", tmp_path / "d0.npz")
    assert "task identification" not in plain.out
    refused = cli("update", "--data", tmp_path / "d0.npz", "--next-state", tmp_path / "x",
                  "--method", "s-prompts")  # fmt: skip
    assert refused.code != 0 and refused.err_lines == [
        "ricordo: error: method 's-prompts' trains small parts of a frozen pretrained "
        "transformer; pass --backbone NAME_OR_PATH (Python: backbone=...), a ViT or BERT-like "
        "encoder's hub name or folder"
    ]
