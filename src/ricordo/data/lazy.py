"""Data larger than RAM: a chunk read sample by sample through a torch ``DataLoader``.

``LazyDataset`` wraps a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` items. Its labels
are known up front (given, the dataset's ``targets``, or one pass over the items), so class
checks, the validation split and the head's width need no pixels; the features are decoded
batch by batch while training, in ``--workers`` processes, and an optional per-sample
``transform`` (a random augmentation) runs there, afresh every epoch.

What a transform sees: the sample as a float32 tensor (the raw row, as decoded: PIL images
become (C, H, W) in [0, 1]); it returns a tensor of the same shape. The same callable augments
the rows a method replays from its memory (which stores the raw rows), so it must accept any
such row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ricordo.data.dataset import ArrayDataset
from ricordo.errors import DataError, RicordoError

SampleTransform = Callable[[Tensor], Tensor]
# Rows per piece when a whole lazy chunk is walked outside training (evaluation, Fisher, A-GEM).
PASS_ROWS = 256


def sample_tensor(x: Any, where: str) -> Tensor:
    """One sample's features as a float32 tensor: tensors and arrays keep their shape, PIL
    images become (C, H, W) in [0, 1] (as image folders are read)."""
    if isinstance(x, Tensor):
        if x.dtype.is_complex:
            raise DataError(f"features of {where} have dtype {x.dtype}; return numbers")
        return x.detach().to(torch.float32)
    if hasattr(x, "getbands") and hasattr(x, "convert"):  # a PIL image, without importing PIL
        array = np.asarray(x.convert("L" if x.mode in ("1", "L", "LA") else "RGB"))
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)
    try:
        array = np.asarray(x)
    except (ValueError, TypeError):
        raise DataError(
            f"features of {where} cannot be read as one array; return numbers"
        ) from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"features of {where} have dtype {array.dtype}; return numbers")
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _label(y: Any, where: str) -> int:
    if isinstance(y, Tensor):
        if y.numel() != 1:
            raise DataError(
                f"{where} has a label of shape {tuple(y.shape)}; return one class id per item"
            )
        y = y.reshape(()).item()
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, float, np.integer, np.floating)):
        raise DataError(f"{where} has label {y!r}; labels must be integer class ids 0..K-1")
    if float(y) != int(y):
        raise DataError(f"{where} has label {y!r}; labels must be integer class ids 0..K-1")
    return int(y)


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(item, Sequence) or isinstance(item, (str, bytes)) or len(item) != 2:
        raise DataError(
            f"{where} is a {type(item).__name__}, not an (x, y) pair; make __getitem__ "
            "return (features, label)"
        )
    return item[0], item[1]


class LazyDataset:
    """A chunk whose samples are read on demand (see the module docstring).

    ``dataset``: a map-style torch Dataset whose items are ``(x, y)`` pairs, ``x`` a tensor,
    array or PIL image and ``y`` a class id. ``transform``: optional per-sample training
    augmentation, tensor -> tensor of the same shape (never applied to evaluation, validation
    or the rows stored in a memory). ``labels``: the class id of every item, when known without
    reading the items; by default the dataset's ``targets`` attribute (torchvision datasets),
    else one pass over the items (every sample is decoded once for its label). ``name`` appears
    in error messages and the fingerprint.
    """

    group = None  # grouped scenarios cut eager data only
    feature_names = None

    def __init__(
        self,
        dataset: Dataset[Any],
        transform: SampleTransform | None = None,
        labels: Any = None,
        *,
        name: str | None = None,
    ) -> None:
        if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(
            dataset, "__getitem__"
        ):
            raise DataError(
                f"{type(dataset).__name__} is not a map-style torch Dataset; LazyDataset needs "
                "__len__ and __getitem__ returning (x, y)"
            )
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(
                f"{type(dataset).__name__} has no __len__; give the Dataset one"
            ) from None
        if transform is not None and not callable(transform):
            raise DataError(
                f"transform is a {type(transform).__name__}, not a callable; pass a function "
                "tensor -> tensor"
            )
        self.dataset = dataset
        self.transform = transform
        self.name = name or type(dataset).__name__
        self.y = _known_labels(dataset, labels, size, self.name)
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"LazyDataset({self.name}, {len(self)} samples)"

    # -- what the engine and the Updater read without decoding every sample ------------------
    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one sample (decoded once, from the first item)."""
        if self._shape is None:
            if len(self) == 0:
                return ()
            self._shape = tuple(self.read(0)[0].shape)
        return self._shape

    def classes(self) -> list[int]:
        """Sorted distinct class ids present in the data."""
        return [int(c) for c in torch.unique(self.y).tolist()]

    def subset(self, index: Tensor) -> LazyDataset:
        """The rows at ``index`` (still lazy, with the same transform)."""
        positions = [int(i) for i in torch.as_tensor(index).tolist()]
        part = LazyDataset.__new__(LazyDataset)
        part.dataset = Subset(self.dataset, positions)
        part.transform = self.transform
        part.name = self.name
        part.y = self.y[torch.as_tensor(positions, dtype=torch.int64)]
        part._shape = self._shape
        return part

    def with_transform(self, transform: SampleTransform | None) -> LazyDataset:
        """The same rows with another per-sample transform."""
        other = LazyDataset.__new__(LazyDataset)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def fingerprint(self) -> str:
        """sha256 of the name, length, sample shape and labels: identifies the chunk an update
        saw without reading its samples (unlike an in-memory chunk's, not of the pixels)."""
        digest = hashlib.sha256()
        digest.update(f"lazy:{self.name}:{len(self)}:{self.feature_shape}".encode())
        digest.update(self.y.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def validate(self, *, name: str = "data") -> LazyDataset:
        """Refuse an empty chunk or negative labels now; non-finite features are found batch
        by batch while training (reading every sample first would defeat the purpose)."""
        if len(self) == 0:
            raise DataError(f"{name} is empty (0 samples); pass a chunk with at least one sample")
        if int(self.y.min()) < 0:
            raise DataError(
                f"{name} has negative label {int(self.y.min())}; labels must be class ids 0..K-1"
            )
        self.feature_shape  # noqa: B018  (decode one sample: a broken dataset fails here)
        return self

    # -- reading samples -----------------------------------------------------------------------
    def read(self, i: int) -> tuple[Tensor, int]:
        """Sample ``i`` as (float32 features, label), untransformed."""
        where = f"item {i} of {self.name}"
        x, y = _pair(self.dataset[i], where)
        features, label = sample_tensor(x, where), _label(y, where)
        if self._shape is not None and tuple(features.shape) != self._shape:
            raise DataError(
                f"{where} has feature shape {tuple(features.shape)} but item 0 has "
                f"{self._shape}; all samples need the same shape (images: resize them, "
                "e.g. --dataset-option size=H,W)"
            )
        if label != int(self.y[i]):
            raise DataError(
                f"{where} has label {label} but the labels given for it say {int(self.y[i])}; "
                "pass labels in the dataset's order"
            )
        return features, label

    def load(self, index: Tensor) -> ArrayDataset:
        """The rows at ``index`` read into memory, untransformed (for a few rows)."""
        positions = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        rows = [self.read(i)[0] for i in positions]
        x = torch.stack(rows) if rows else torch.empty(0, *self.feature_shape)
        return ArrayDataset(x, self.y[torch.as_tensor(positions, dtype=torch.int64)])

    def loader(
        self,
        batches: Sampler[list[int]] | Sequence[Sequence[int]],
        *,
        transform: SampleTransform | None = None,
        workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        persistent: bool = False,
    ) -> DataLoader[Any]:
        """A DataLoader yielding ``LoadedBatch``es of the index lists ``batches``; ``transform``
        (None: no augmentation) runs per sample in the ``workers`` processes. ``seed`` fixes
        the workers' random numbers (torch seeds worker k with a base drawn from it, plus k)."""
        self.feature_shape  # noqa: B018  (known before the workers copy this object)
        return DataLoader(
            _Samples(self, transform),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collate,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=pin_memory,
            persistent_workers=persistent and workers > 0,
        )


@dataclass
class LoadedBatch:
    """Rows read by a DataLoader: ``raw`` as decoded, ``seen`` transformed (``raw`` itself
    without a transform), their labels and positions in the dataset."""

    raw: Tensor
    seen: Tensor
    y: Tensor
    index: Tensor


@dataclass
class _Failure:
    """A RicordoError raised in a worker, carried back so the main process raises it in one
    line (a DataLoader wraps worker exceptions in a traceback)."""

    kind: type[RicordoError]
    message: str


class _Samples(Dataset[Any]):
    def __init__(self, source: LazyDataset, transform: SampleTransform | None) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Any:
        try:
            raw, label = self.source.read(i)
            if self.transform is None:
                return raw, raw, label, i
            seen = sample_tensor(self.transform(raw), f"the transform of item {i}")
            if seen.shape != raw.shape:
                raise DataError(
                    f"the transform turned item {i} of {self.source.name} from shape "
                    f"{tuple(raw.shape)} into {tuple(seen.shape)}; a training transform must "
                    "keep the shape (the memory and evaluation see untransformed samples)"
                )
            return raw, seen, label, i
        except RicordoError as error:
            return _Failure(type(error), str(error))


def _collate(items: list[Any]) -> LoadedBatch | _Failure:
    for item in items:
        if isinstance(item, _Failure):
            return item
    raw = torch.stack([item[0] for item in items])
    same = all(item[1] is item[0] for item in items)
    seen = raw if same else torch.stack([item[1] for item in items])
    y = torch.tensor([item[2] for item in items], dtype=torch.int64)
    index = torch.tensor([item[3] for item in items], dtype=torch.int64)
    return LoadedBatch(raw, seen, y, index)


def loaded(batch: LoadedBatch | _Failure, name: str) -> LoadedBatch:
    """``batch``, or the worker's error raised here; non-finite features refused (one line)."""
    if isinstance(batch, _Failure):
        raise batch.kind(batch.message)
    finite = torch.isfinite(batch.raw).flatten(1).all(1)
    if not bool(finite.all()):
        bad = batch.index[~finite].tolist()
        raise DataError(
            f"{name} has NaN or infinite features in sample(s) {bad[:5]}; "
            "clean or impute them before updating"
        )
    return batch


class EpochOrder(Sampler[list[int]]):
    """Batches of ``batch_size`` positions in the order set for the coming epoch, so one
    DataLoader (and its persistent workers) serves every epoch of an update."""

    def __init__(self, size: int, batch_size: int) -> None:
        self.size, self.batch_size = size, batch_size
        self.order = torch.arange(size)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.size, self.batch_size):
            yield self.order[start : start + self.batch_size].tolist()


def batches_in_order(
    data: ArrayDataset | LazyDataset, batch_size: int, *, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` pieces of ``batch_size`` rows in the data's order, untransformed, for either
    kind of chunk: slices of an in-memory one, DataLoader batches of a lazy one."""
    if not isinstance(data, LazyDataset):
        for start in range(0, len(data), batch_size):
            yield data.x[start : start + batch_size], data.y[start : start + batch_size]
        return
    order = [
        list(range(s, min(s + batch_size, len(data)))) for s in range(0, len(data), batch_size)
    ]
    for batch in data.loader(order, workers=workers):
        rows = loaded(batch, data.name)
        yield rows.raw, rows.y


def per_sample(transform: Callable[[Tensor, torch.Generator | None], Tensor]) -> SampleTransform:
    """A batched augmentation (``ricordo.data.augment``) as a per-sample transform: each sample
    is augmented alone, drawing from torch's global random numbers (seeded per worker)."""
    return _PerSample(transform)


@dataclass(frozen=True)
class _PerSample:
    batched: Callable[[Tensor, torch.Generator | None], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        return self.batched(x[None], None)[0]


@dataclass(frozen=True)
class Compose:
    """Per-sample transforms applied in order (a dataset's own, then ``--augment``)."""

    steps: tuple[SampleTransform, ...]

    def __call__(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x


def _known_labels(dataset: Any, labels: Any, size: int, name: str) -> Tensor:
    """Every item's class id without decoding samples where the source says them."""
    given = labels if labels is not None else _targets(dataset)
    if given is None:  # one pass over the items: every sample is decoded once
        given = [
            _label(_pair(dataset[i], f"item {i} of {name}")[1], f"item {i} of {name}")
            for i in range(size)
        ]
    array = np.asarray(given.detach().cpu() if isinstance(given, Tensor) else given)
    if array.ndim != 1 or len(array) != size:
        raise DataError(
            f"labels of {name} have shape {array.shape} but it has {size} items; pass one class "
            "id per item"
        )
    if array.dtype.kind not in "biuf" or (
        array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array)))
    ):
        raise DataError(f"labels of {name} are not integer class ids; map them to 0..K-1 first")
    return torch.from_numpy(array.astype(np.int64))


def _targets(dataset: Any) -> Any:
    """Labels a dataset exposes: ``targets`` (torchvision), through ``Subset``s."""
    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        if inner is None:
            return None
        return np.asarray(inner)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        return np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
    except (TypeError, ValueError):
        return None


def training_transform(
    transform: SampleTransform | None, augment: str | None
) -> SampleTransform | None:
    """The per-sample transform of a lazy chunk's training rows: the dataset's own, then the
    ``--augment`` spec applied to each sample alone (None: neither)."""
    steps: list[SampleTransform] = [] if transform is None else [transform]
    if augment is not None:
        from ricordo.data.augment import parse_augmentation

        steps.append(per_sample(parse_augmentation(augment)))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(tuple(steps))
