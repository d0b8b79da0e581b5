"""The synthetic text domains and the PEFT study scripts (benchmarks/peft_cpu.py, peft_gpu.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ricordo.bench.chunks import load_chunks
from ricordo.data.text_domains import DOMAINS, SUBJECTS, TOPICS, domain_texts, write_text_domains
from ricordo.errors import ConfigError, DataError
from ricordo.methods import METHODS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
STUDY_METHODS = ("l2p", "l2l", "s-prompts", "s-lora", "color", "finetune", "er")
ROUTED = ("l2p", "l2l", "s-prompts", "s-lora", "color")


def test_domain_texts_are_deterministic_balanced_and_seeded() -> None:
    texts, labels = domain_texts("chat", 40, seed=3)
    again, labels_again = domain_texts("chat", 40, seed=3)
    assert texts == again and np.array_equal(labels, labels_again)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [10, 10, 10, 10]
    assert len(set(texts)) == 40
    assert domain_texts("chat", 40, seed=4)[0] != texts
    # The subject decides the label: each text names one of its topic's chat subjects.
    for text, label in zip(texts, labels, strict=True):
        assert any(s in text for s in SUBJECTS["chat"][TOPICS[label]]), (text, label)


def test_domains_differ_in_vocabulary() -> None:
    words = {
        d: {w for t in domain_texts(d, 80, seed=0)[0] for w in t.lower().split()} for d in DOMAINS
    }
    for a in DOMAINS:
        for b in DOMAINS:
            if a < b:
                assert words[a] - words[b] and words[b] - words[a], (a, b)


def test_written_chunks_are_byte_identical_and_load_as_a_scenario(tmp_path: Path) -> None:
    first = write_text_domains(
        tmp_path / "a", domains=("headlines", "memos"), train_size=20, test_size=8
    )
    second = write_text_domains(
        tmp_path / "b", domains=("headlines", "memos"), train_size=20, test_size=8
    )

    def digests(folder: Path) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
        }

    assert digests(first) == digests(second)
    assert sorted(digests(first)) == [
        "scenario.json", "test-0.npz", "test-1.npz", "train-0.npz", "train-1.npz",
    ]  # fmt: skip
    with np.load(first / "train-1.npz", allow_pickle=False) as npz:
        assert npz["text"].dtype.kind == "U" and npz["text"].shape == (20,)
        train_texts = set(npz["text"].tolist())
    with np.load(first / "test-1.npz", allow_pickle=False) as npz:
        assert not train_texts & set(npz["text"].tolist())  # no test sentence is trained on
    scenario = load_chunks(
        first, tokenize=lambda texts: torch.zeros(len(texts), 4, dtype=torch.long)
    )
    assert scenario.name == "text-domains"
    assert scenario.chunk_classes == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert [len(t) for t in scenario.train] == [20, 20] and [len(t) for t in scenario.test] == [
        8,
        8,
    ]
    assert scenario.info["synthetic"] is True and scenario.info["domains"] == ["headlines", "memos"]
    # A folder holding an earlier export is replaced only when asked.
    with pytest.raises(DataError, match="is not empty"):
        write_text_domains(first, domains=("chat",), train_size=4, test_size=4)
    write_text_domains(first, domains=("chat",), train_size=4, test_size=4, overwrite=True)
    assert sorted(p.name for p in first.iterdir()) == ["scenario.json", "test-0.npz", "train-0.npz"]


def test_bad_generator_arguments_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        domain_texts("tweets", 10, seed=0)
    assert str(error.value) == (
        "text domain 'tweets' is unknown; choose from headlines, questions, chat, reviews, memos"
    )
    with pytest.raises(
        ConfigError, match=r"^5000 sentences per domain is out of range; pick 1\.\.1024$"
    ):
        domain_texts("chat", 5000, seed=0)
    with pytest.raises(ConfigError, match="repeat one"):
        write_text_domains(tmp_path, domains=("chat", "chat"))


@pytest.fixture(scope="module")
def tiny_bert(minilm_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer BERT of width 32 with MiniLM's tokenizer: the CPU study's
    pipeline in seconds."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.utils.logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    finally:
        transformers.utils.logging.enable_progress_bar()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(minilm_path) / name, folder / name)
    return str(folder)


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_cpu_study_smoke_run_prints_a_row_per_method(tiny_bert: str, tmp_path: Path) -> None:
    done = _script(
        "peft_cpu.py", "--smoke", "--backbone", tiny_bert, "--out", str(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = [m for m in STUDY_METHODS if m in METHODS.names()]
    assert {"s-prompts", "s-lora", "color", "finetune", "er"} <= set(expected)
    lines = done.stdout.splitlines()
    assert any(line.startswith("$ ") and " benchmark --chunks " in line for line in lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("| method "))
    rows = [line.strip("|").split("|") for line in lines[start + 2 :] if line.startswith("| ")]
    assert [r[0].strip() for r in rows] == expected
    for method, runs, accuracy, _forgetting, task_id, trainable, seconds in (
        map(str.strip, r) for r in rows
    ):
        assert runs == "1/1", method
        assert 0.0 <= float(accuracy) <= 100.0
        assert float(seconds) >= 0.0
        assert int(trainable.replace(",", "")) > 0
        # Task identification is defined for the methods that route rows (experts or pool keys).
        assert (task_id != "-") == (method in ROUTED), (method, task_id)
    # The benchmark ran on the generated chunks: 2 domains of 12 training rows.
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["experiment"]["chunks"] == str(tmp_path / "chunks")
    assert (
        json.loads((tmp_path / "chunks" / "scenario.json").read_text())["info"]["train_size"] == 12
    )


def test_gpu_study_refuses_without_cuda_and_dry_run_resolves_every_run(tmp_path: Path) -> None:
    assert not torch.cuda.is_available()  # this check is about the CPU machines the tests run on
    refused = _script("peft_gpu.py", "--out", str(tmp_path / "real"), cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "peft_gpu: no CUDA GPU visible to this Python's torch (torch.cuda.is_available() is "
        "False); run it on a GPU machine, or pass --dry-run"
    ]
    assert not (tmp_path / "real").exists()

    dry = _script(
        "peft_gpu.py",
        "--dry-run",
        "--seeds",
        "2",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "dry"),
        cwd=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "# (a real run would stop here: no CUDA GPU" in out
    assert f"CIFAR-100 binary files not found in {tmp_path}/cifar100/cifar-100-binary" in out
    command = next(line for line in out.splitlines() if line.startswith("$ "))
    assert " benchmark -c " in command and "--accelerator cuda" in command
    resolved = {
        line.split(":")[0].strip("# "): line
        for line in out.splitlines()
        if line.startswith("#   ") and ": method " in line
    }
    runs = [
        "l2p",
        "l2l",
        "s-prompts",
        "s-prompts++",
        "s-lora",
        "s-lora++",
        "color",
        "finetune",
        "er",
    ]
    registered = METHODS.names()
    expected = [r for r in runs if r.rstrip("+") in registered]
    assert list(resolved) == expected
    for pool in ("l2p", "l2l"):
        if pool in resolved:
            assert "adam lr 0.001875 momentum 0.0 wd 0.0 batch 16 epochs 5" in resolved[pool]
    assert "sgd lr 0.01 momentum 0.9 wd 0.0002 batch 128 epochs 5" in resolved["s-lora"]
    assert "params {'routing': 'first-task'}" in resolved["s-lora++"]
    assert "memory 2000" in resolved["er"]
    assert "backbone google/vit-base-patch16-224-in21k" in resolved["color"]
    experiment = json.loads((tmp_path / "dry" / "experiment-peft.yaml").read_text())
    assert experiment["seeds"] == [0, 1] and experiment["updates"] == 10
    assert sorted(experiment["scenario_options"]["class_order"]) == list(range(100))
    assert experiment["scenario_options"]["class_order"][:5] == [68, 56, 78, 8, 23]


def test_text_domains_example_runs_on_a_tiny_backbone(tiny_bert: str, tmp_path: Path) -> None:
    example = BENCHMARKS.parent / "examples" / "text_domains.py"
    done = subprocess.run(
        [sys.executable, str(example), tiny_bert],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "headlines",
        "chat",
        "reviews",
        "finetune",
        "s-lora",
    ]
    assert "task identification" in lines[-1] and "task identification" not in lines[-2]
    assert sorted(p.name for p in (tmp_path / "text-domains").iterdir())[0] == "scenario.json"
