"""Data larger than RAM (issue 10.3): lazy chunks read through a DataLoader, per-sample
transforms at load time every epoch, the memory holding raw rows, image folders, Hugging Face
datasets and .npz files read sample by sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from ricordo.data import ArrayDataset, LazyDataset
from ricordo.data.lazy_sources import lazy_hf, lazy_image_folder, lazy_npz
from ricordo.errors import ConfigError, DataError
from ricordo.methods import METHODS, Batch, UpdateContext
from ricordo.methods.er import ExperienceReplay
from ricordo.updater import Updater

FAST = {"hidden": (16,), "threads": 1, "progress": False, "batch_size": 16}


def _blobs(n: int = 96, classes: int = 3, seed: int = 0) -> ArrayDataset:
    """Separable (N, 1, 4, 4) images: class c is brighter in row c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.3
    x[torch.arange(n), 0, y] += 0.7
    return ArrayDataset(x, y)


class Items(Dataset):
    """A plain map-style Dataset of (x, y) pairs over tensors (reads one row at a time)."""

    def __init__(self, data: ArrayDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.data.x[i], int(self.data.y[i])


def _noise(x: Tensor) -> Tensor:
    """A random per-sample transform (global RNG: seeded per update and per worker)."""
    return x + 0.01 * torch.randn(x.shape)


# A tiny method that records what the loss and the memory saw, per epoch (registered per test).
class _Recorder(ExperienceReplay):
    name = "_lazy-recorder"
    seen: list[Tensor] = []
    stored: list[Tensor] = []

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        type(self).seen.append(batch.x.detach().cpu().clone())
        return F.cross_entropy(ctx.logits(batch.x), batch.y)

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        type(self).stored.append(batch.x.detach().cpu().clone())
        super().after_step(batch, ctx)


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(METHODS._items, _Recorder.name, _Recorder)
    _Recorder.seen, _Recorder.stored = [], []
    yield _Recorder
    _Recorder.seen, _Recorder.stored = [], []


def test_random_transform_gives_different_samples_each_epoch_and_memory_keeps_raw_rows(recorder):
    data = _blobs(48)
    updater = Updater(
        method="_lazy-recorder",
        memory_size=500,
        epochs=2,
        batch_size=48,
        **{k: v for k, v in FAST.items() if k != "batch_size"},
    )
    updater.update(LazyDataset(Items(data), transform=_noise))
    first, second = recorder.seen  # one batch of all 48 rows per epoch, in shuffled orders
    # Each epoch transforms afresh: the same rows differ between epochs and from the raw rows.
    raw = {tuple(r.flatten().tolist()) for r in data.x}
    assert not any(tuple(r.flatten().tolist()) in raw for r in first)
    stored_raw = torch.cat(recorder.stored)
    assert all(tuple(r.flatten().tolist()) in raw for r in stored_raw)  # after_step: raw rows
    # Match each epoch's transformed row to its raw row (the nearest one): all rows differ.
    nearest = lambda s: torch.cdist(s.flatten(1), data.x.flatten(1)).argmin(1)  # noqa: E731
    a, b = first[nearest(first).argsort()], second[nearest(second).argsort()]
    assert torch.equal(nearest(first).sort().values, torch.arange(48))
    assert not torch.isclose(a, b).all(dim=(1, 2, 3)).any()
    # The memory holds raw rows too.
    memory = updater.memory.get()["x"]
    assert all(tuple(r.flatten().tolist()) in raw for r in memory)


def test_replayed_rows_get_the_per_sample_transform(recorder):
    updater = Updater(method="_lazy-recorder", memory_size=500, epochs=2, lr=1e-4, **FAST)
    updater.update(LazyDataset(Items(_blobs(32)), transform=lambda x: x + 10.0))
    # A second lazy update replays stored raw rows through the same transform: every row the
    # loss saw is shifted (new and replayed), none raw.
    recorder.seen.clear()
    updater.update(LazyDataset(Items(_blobs(32, seed=1)), transform=lambda x: x + 10.0))
    seen = torch.cat(recorder.seen)
    assert bool((seen >= 10.0).all())


@pytest.mark.parametrize("method", ["finetune", "er", "der++", "a-gem", "lwf"])
def test_lazy_equals_in_memory_without_a_transform(method):
    chunks = [_blobs(64, seed=0), ArrayDataset(_blobs(64, seed=1).x, _blobs(64, seed=1).y + 3)]
    weights = []
    for lazy in (False, True):
        updater = Updater(method=method, memory_size=40, epochs=2, val_fraction=0.2, **FAST)
        for chunk in chunks:
            updater.update(LazyDataset(Items(chunk)) if lazy else chunk)
        weights.append(updater.model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_ewc_on_lazy_data_matches_in_memory_closely():
    chunks = [_blobs(64, seed=0), ArrayDataset(_blobs(64, seed=1).x, _blobs(64, seed=1).y + 3)]
    out = []
    for lazy in (False, True):
        updater = Updater(method="ewc", epochs=2, **FAST)
        for chunk in chunks:
            updater.update(LazyDataset(Items(chunk)) if lazy else chunk)
        out.append(updater.method.fisher)
    for name, value in out[0].items():
        torch.testing.assert_close(value, out[1][name], rtol=1e-4, atol=1e-7)


def test_a_plain_dataset_is_read_lazily_by_methods_that_can_and_in_memory_by_the_others():
    updater = Updater(method="er", memory_size=20, epochs=1, **FAST)
    record = updater.update(Items(_blobs(32)))
    assert record["data"]["fingerprint"] == LazyDataset(Items(_blobs(32))).fingerprint()
    icarl = Updater(method="icarl", memory_size=20, epochs=1, **FAST)
    record = icarl.update(Items(_blobs(32)))  # read into memory, as before
    assert record["data"]["samples"] == 32


def test_a_method_that_needs_the_whole_chunk_refuses_lazy_data():
    able = sorted(n for n in METHODS.names() if METHODS.get(n).supports_lazy_data)
    for name in ("finetune", "er", "er-ace", "der", "der++", "a-gem", "ewc", "lwf"):
        assert name in able
    updater = Updater(method="icarl", memory_size=20, epochs=1, **FAST)
    with pytest.raises(ConfigError) as error:
        updater.update(LazyDataset(Items(_blobs(32))))
    assert str(error.value) == (
        "method 'icarl' needs the whole chunk in memory and cannot train on lazy data (a "
        f"LazyDataset, --lazy); methods that can: {', '.join(able)}; or load the chunk into "
        "memory (without --lazy)"
    )
    assert updater.model is None
    herding = Updater(method="er", memory_size=20, memory_policy="herding", epochs=1, **FAST)
    with pytest.raises(ConfigError, match="memory policy 'herding' selects from the whole chunk"):
        herding.update(LazyDataset(Items(_blobs(32))))


def test_bad_samples_fail_in_one_line_before_any_state():
    data = _blobs(40)
    x = data.x.clone()
    x[37, 0, 0, 0] = float("nan")
    updater = Updater(method="er", memory_size=20, epochs=1, **FAST)
    with pytest.raises(DataError) as error:
        updater.update(LazyDataset(Items(ArrayDataset(x, data.y)), name="bad"), data_workers=1)
    assert str(error.value) == (
        "the chunk has NaN or infinite features in sample(s) [37]; clean or impute them before "
        "updating"
    )
    assert updater.model is None and updater.updates == 0
    with pytest.raises(DataError, match=r"^item 4 of Items has label 1 but the labels given"):
        LazyDataset(Items(data), labels=torch.zeros(40)).load(torch.tensor([4]))
    with pytest.raises(
        DataError,
        match=r"^the transform turned item \d+ of Items from shape \(1, 4, 4\) into \(1, 2, 4\)",
    ):
        Updater(method="er", memory_size=20, epochs=1, **FAST).update(
            LazyDataset(Items(data), transform=lambda x: x[:, :2])
        )


def test_workers_state_round_trip_and_evaluation(tmp_path):
    data, test = _blobs(96, seed=0), _blobs(48, seed=5)
    updater = Updater(method="der++", memory_size=30, epochs=3, lr=0.1, data_workers=2, **FAST)
    updater.update(LazyDataset(Items(data), transform=_noise), val_fraction=0.25)
    accuracy = updater.evaluate(LazyDataset(Items(test)))["accuracy"]
    assert accuracy == updater.evaluate(test)["accuracy"] > 0.6  # chance: 1/3
    updater.save(str(tmp_path / "v0"))
    loaded = Updater.load(str(tmp_path / "v0"))
    assert torch.equal(loaded.predict_logits(test.x), updater.predict_logits(test.x))
    assert loaded.config.data_workers == 2
    # Two runs with workers give the same weights (the workers' seeds come from the update's).
    again = Updater(method="der++", memory_size=30, epochs=3, lr=0.1, data_workers=2, **FAST)
    again.update(LazyDataset(Items(data), transform=_noise), val_fraction=0.25)
    for name, value in updater.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


def _png_folder(root, n_per_class: int = 6):
    from PIL import Image

    g = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = (g.random((8, 8, 3)) * 60).astype(np.uint8)
            pixels[:, :, c] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_lazy_reads_the_same_pixels_as_the_eager_loader(tmp_path):
    from ricordo.data.image_folder import load_image_folder

    _png_folder(tmp_path / "images")
    lazy = lazy_image_folder(tmp_path / "images", size=6)
    eager = load_image_folder(tmp_path / "images", size=6)
    assert lazy.feature_shape == eager.feature_shape == (3, 6, 6)
    assert torch.equal(lazy.y, eager.y)
    assert torch.equal(lazy.load(torch.arange(len(lazy))).x, eager.x)
    train = lazy_image_folder(tmp_path / "images", split="train")
    assert len(train) == 10 and train.classes() == [0, 1]


def test_cli_updates_on_a_lazy_image_folder_with_workers_and_augment(tmp_path):
    from typer.testing import CliRunner

    from ricordo.cli import app

    _png_folder(tmp_path / "images")
    args = ["update", "--data", str(tmp_path / "images"), "--dataset", "image-folder", "--lazy"]
    args += ["--data-workers", "2", "--augment", "crop:1,flip", "--method", "er", "--epochs", "2"]
    args += [
        "--hidden",
        "8",
        "--threads",
        "1",
        "--no-progress",
        "--next-state",
        str(tmp_path / "s"),
    ]
    args += ["--dataset-option", "size=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "12 samples, classes [0, 1]" in result.output
    state = Updater.load(str(tmp_path / "s"))
    assert state.model_spec["input_shape"] == [3, 8, 8] or tuple(
        state.model_spec["input_shape"]
    ) == (3, 8, 8)
    assert state.config.data_workers == 2


def test_hf_dataset_saved_to_disk_is_read_row_by_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = _blobs(40)
    ds = datasets.Dataset.from_dict(
        {"pixels": data.x.numpy().tolist(), "label": data.y.tolist()},
        features=datasets.Features(
            {
                "pixels": datasets.Array3D((1, 4, 4), "float32"),
                "label": datasets.ClassLabel(num_classes=3),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    lazy = lazy_hf(tmp_path / "hf")
    assert len(lazy) == 40 and lazy.feature_shape == (1, 4, 4)
    assert torch.equal(lazy.load(torch.arange(40)).x, data.x)
    updater = Updater(method="er", memory_size=20, epochs=2, **FAST)
    assert updater.update(lazy)["data"]["samples"] == 40


def test_npz_is_read_row_by_row_and_compressed_files_are_refused(tmp_path):
    data = _blobs(30)
    pixels = (data.x * 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "chunk.npz", x=pixels, y=data.y.numpy())
    lazy = lazy_npz(tmp_path / "chunk.npz")
    assert torch.equal(lazy.load(torch.arange(30)).x, torch.from_numpy(pixels).float())
    np.savez_compressed(tmp_path / "packed.npz", x=pixels, y=data.y.numpy())
    with pytest.raises(DataError, match=r"^packed.npz stores 'x' compressed"):
        lazy_npz(tmp_path / "packed.npz")


def test_cli_lazy_npz_and_its_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from ricordo.cli import app

    data = _blobs(40)
    np.savez(tmp_path / "chunk.npz", x=data.x.numpy(), y=data.y.numpy())
    base = ["update", "--method", "er", "--epochs", "1", "--hidden", "8", "--threads", "1"]
    base += ["--no-progress", "--next-state", str(tmp_path / "s")]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--data", str(tmp_path / "chunk.npz"), "--lazy"])
    assert result.exit_code == 0, result.output
    assert "40 samples, classes [0, 1, 2]" in result.output
    (tmp_path / "t.csv").write_text("a,label\n1,0\n")
    result = runner.invoke(
        app, [*base[:-1], str(tmp_path / "s2"), "--data", str(tmp_path / "t.csv"), "--lazy"]
    )
    assert isinstance(result.exception, ConfigError)  # main() prints it as one line
    assert str(result.exception) == (
        f"--lazy reads a .npz file, or a folder with --dataset image-folder or hf; "
        f"{tmp_path / 't.csv'} is neither (CSV and Parquet tables are read into memory: "
        "drop --lazy)"
    )
