"""The CLI with a pretrained --backbone: text chunks (.npz with 'text') through update,
evaluate, predict and benchmark --chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRAIN = ("--epochs", "2", "--lr", "0.1", "--batch-size", "16", "--threads", "1", "--no-progress")


def test_update_evaluate_predict_on_text_chunks(
    cli, minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    for k, classes in enumerate(([0, 1], [2, 3])):
        texts, labels = topic_texts(classes, 24, k)
        np.savez(tmp_path / f"train-{k}.npz", text=texts, y=labels)
    texts, labels = topic_texts([0, 1, 2, 3], 20, 9)
    np.savez(tmp_path / "test.npz", text=texts, y=labels)
    first = cli(
        "update", "--data", tmp_path / "train-0.npz", "--next-state", tmp_path / "s0",
        "--backbone", minilm_path, "--max-length", "16", *TRAIN,
    )  # fmt: skip
    assert first.code == 0, first.err
    assert "update 0 (er): 24 samples, classes [0, 1]" in first.out
    second = cli(
        "update", "--data", tmp_path / "train-1.npz", "--state", tmp_path / "s0",
        "--next-state", tmp_path / "s1", *TRAIN,
    )  # fmt: skip
    assert second.code == 0, second.err
    assert (tmp_path / "s1" / "model.safetensors").stat().st_size < 1_000_000
    info = cli("info", tmp_path / "s1")
    assert f"backbone {minilm_path} (sha256 " in info.out and "input (16,)" in info.out
    evaluated = cli("evaluate", "--state", tmp_path / "s1", "--data", tmp_path / "test.npz")
    assert evaluated.code == 0, evaluated.err
    assert float(evaluated.out.split()[1]) > 0.5  # 4 classes: chance is 0.25
    out = tmp_path / "pred.npy"
    predicted = cli(
        "predict", "--state", tmp_path / "s1", "--data", tmp_path / "test.npz", "--output", out
    )
    assert predicted.code == 0, predicted.err
    assert np.load(out).shape == (20,)


def test_text_without_backbone_is_one_line(cli, topic_texts, tmp_path: Path) -> None:
    texts, labels = topic_texts([0, 1], 8, 0)
    np.savez(tmp_path / "chunk.npz", text=texts, y=labels)
    result = cli("update", "--data", tmp_path / "chunk.npz", "--next-state", tmp_path / "s0")
    assert result.code != 0
    assert result.err_lines == [
        f"ricordo: error: {tmp_path / 'chunk.npz'} is text (strings, not numbers), which needs "
        "a tokenizer: pass --backbone NAME_OR_PATH, a BERT-like text encoder (Python: "
        "backbone=...)"
    ]
    assert not (tmp_path / "s0").exists()


def test_benchmark_on_a_folder_of_text_chunks(
    cli, minilm_path: str, topic_texts, tmp_path: Path
) -> None:
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for k, classes in enumerate(([0, 1], [2, 3])):
        for split, n, seed in (("train", 16, k), ("test", 8, k + 5)):
            texts, labels = topic_texts(classes, n, seed)
            np.savez(chunks / f"{split}-{k}.npz", text=texts, y=labels)
    result = cli(
        "benchmark", "--chunks", chunks, "--backbone", minilm_path, "--max-length", "16",
        "--method", "er", "--output", tmp_path / "out", *TRAIN,
    )  # fmt: skip
    assert result.code == 0, result.err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 2
