"""The optbench test problems: small offline versions of DeepOBS's (methods.md section 11.1).

Each problem fixes its data, its model, its loss, its batch size and its full epoch budget; a
seed changes only the model's initialisation and the order of the training batches. Data come
from the Python installation or scikit-learn, never from the network:

| problem | DeepOBS's | data | batch | full epochs | metric |
| --- | --- | --- | --- | --- | --- |
| quadratic_deep | quadratic_deep | 1000 draws of N(0, 0.6^2 I), 100-D | 128 | 100 | test loss |
| digits_mlp | mnist_mlp | sklearn digits, 8x8 | 128 | 100 | test accuracy |
| digits_2c2d | fmnist_2c2d | sklearn digits, 8x8 | 128 | 100 | test accuracy |
| digits_ae | mnist_vae | sklearn digits, 8x8 | 64 | 50 | test loss |
| zen_char_rnn | tolstoi_char_rnn | the Zen of Python (``this.py``) | 50 | 200 | test accuracy |

The batch sizes and epochs are DeepOBS's; the models are smaller, since the inputs are.
"""

from __future__ import annotations

import ast
import codecs
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError, DataError

Metric = Literal["accuracy", "loss"]


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one split (``targets`` None where the input is its own target)."""

    inputs: Tensor
    targets: Tensor | None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The rows at ``index``."""
        return self.inputs[index], None if self.targets is None else self.targets[index]


@dataclass(frozen=True)
class Batch:
    """One evaluated batch: the mean loss (with its graph) and the number of correct
    predictions (None for problems without an accuracy)."""

    loss: Tensor
    correct: int | None
    count: int  # the predictions counted in ``correct`` (tokens for the char model)


class Problem:
    """A test problem: data, model, loss, batch size, full budget and the metric it is judged by.

    Subclasses set the class attributes and implement :meth:`data`, :meth:`model` and
    :meth:`evaluate`.
    """

    name: str = ""
    deepobs: str = ""  # the DeepOBS problem this one scales down
    description: str = ""
    batch_size: int = 128
    epochs: int = 100  # the full budget (DeepOBS's for the problem it scales down)
    metric: Metric = "accuracy"

    def data(self) -> tuple[Split, Split]:
        """The (train, test) splits; the same on every call (cached by the subclass)."""
        raise NotImplementedError

    def model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds torch's generator)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        """The mean loss over a batch and, for classification problems, its correct count."""
        raise NotImplementedError


def _classify(logits: Tensor, targets: Tensor) -> Batch:
    loss = F.cross_entropy(logits, targets)
    correct = int((logits.argmax(-1) == targets).sum())
    return Batch(loss, correct, int(targets.numel()))


@lru_cache(maxsize=1)
def _digits() -> tuple[Split, Split]:
    from ricordo.data.builtin import digits

    train, test = digits()
    return (
        Split(train.x.clone(), train.y.clone()),
        Split(test.x.clone(), test.y.clone()),
    )


class NoisyQuadratic(Problem):
    """DeepOBS's quadratic_deep: loss 0.5 (theta - x)^T H (theta - x) over noisy points x.

    As DeepOBS: 100 dimensions, Hessian eigenvalues 90 from U(0, 1) and 10 from U(30, 60)
    (numpy RandomState(42), so the same eigenvalues), rotated by a random rotation; 1000
    training and 1000 test points from N(0, 0.6^2 I) (RandomState 42 and 43); theta starts at
    ones. Departure: the rotation is scipy's Haar-random ``special_ortho_group`` (seed 42), not
    DeepOBS's own subgroup-algorithm draw, so H differs from DeepOBS's by a rotation.
    """

    name = "quadratic_deep"
    deepobs = "quadratic_deep"
    description = "noisy 100-D quadratic with a deep-learning-like Hessian spectrum"
    batch_size = 128
    epochs = 100
    metric: Metric = "loss"
    dim = 100
    noise = 0.6
    size = 1000

    @property
    def hessian(self) -> Tensor:
        """The fixed Hessian H (float32, dim x dim)."""
        return _quadratic_hessian(self.dim)

    def data(self) -> tuple[Split, Split]:
        return _quadratic_data(self.dim, self.noise, self.size)

    def model(self) -> nn.Module:
        return _Quadratic(self.hessian)

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        return Batch(model(inputs).mean(), None, int(inputs.shape[0]))


@lru_cache(maxsize=2)
def _quadratic_hessian(dim: int) -> Tensor:
    from scipy.stats import special_ortho_group

    rng = np.random.RandomState(42)
    n_large = dim // 10
    eigenvalues = np.concatenate(
        [rng.uniform(0.0, 1.0, dim - n_large), rng.uniform(30.0, 60.0, n_large)]
    )
    rotation = special_ortho_group.rvs(dim, random_state=42)
    hessian = rotation.T @ np.diag(eigenvalues) @ rotation
    hessian = 0.5 * (hessian + hessian.T)  # exactly symmetric despite rounding
    return torch.from_numpy(hessian.astype(np.float32))


@lru_cache(maxsize=2)
def _quadratic_data(dim: int, noise: float, size: int) -> tuple[Split, Split]:
    def draw(seed: int) -> Tensor:
        points = np.random.RandomState(seed).normal(0.0, noise, (size, dim))
        return torch.from_numpy(points.astype(np.float32))

    return Split(draw(42), None), Split(draw(43), None)


class _Quadratic(nn.Module):
    def __init__(self, hessian: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(hessian.shape[0]))
        self.register_buffer("hessian", hessian)

    def forward(self, points: Tensor) -> Tensor:
        """The per-point loss 0.5 (theta - x)^T H (theta - x)."""
        q = self.theta - points
        return 0.5 * ((q @ self.hessian) * q).sum(-1)


class DigitsMLP(Problem):
    """A ReLU MLP 64-256-128-64-10 on the 8x8 digits (DeepOBS's mnist_mlp:
    784-1000-500-100-10)."""

    name = "digits_mlp"
    deepobs = "mnist_mlp"
    description = "MLP 256-128-64 on sklearn's 8x8 digits"
    batch_size = 128
    epochs = 100

    def data(self) -> tuple[Split, Split]:
        return _digits()

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        assert targets is not None
        return _classify(model(inputs), targets)


class Digits2C2D(Problem):
    """Two conv layers and two dense layers on the 8x8 digits, as DeepOBS's 2c2d on 28x28 images:
    conv 3x3 (16) - max-pool - conv 3x3 (32) - max-pool - dense 128 - dense 10 (DeepOBS: 5x5
    convs of 32 and 64 channels, dense 1024)."""

    name = "digits_2c2d"
    deepobs = "fmnist_2c2d"
    description = "2 conv + 2 dense layers on sklearn's 8x8 digits"
    batch_size = 128
    epochs = 100

    def data(self) -> tuple[Split, Split]:
        return _digits()

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        assert targets is not None
        return _classify(model(inputs), targets)


class DigitsAutoencoder(Problem):
    """An autoencoder 64-32-8-32-64 on the digits' pixels (in [0, 1]), binary cross-entropy
    summed over pixels, averaged over images. Departure: DeepOBS's mnist_vae is a variational
    autoencoder; a deterministic one keeps the test loss free of sampling noise."""

    name = "digits_ae"
    deepobs = "mnist_vae"
    description = "autoencoder 32-8-32 on sklearn's 8x8 digits"
    batch_size = 64
    epochs = 50
    metric: Metric = "loss"

    def data(self) -> tuple[Split, Split]:
        train, test = _digits()
        return Split(train.inputs, None), Split(test.inputs, None)

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 8),
            nn.ReLU(),
            nn.Linear(8, 32),
            nn.ReLU(),
            nn.Linear(32, 64),
        )

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        pixels = inputs.flatten(1)
        logits = model(inputs)
        loss = F.binary_cross_entropy_with_logits(logits, pixels, reduction="sum")
        return Batch(loss / pixels.shape[0], None, int(pixels.shape[0]))


class ZenCharRNN(Problem):
    """A character-level LSTM on the Zen of Python, read from the ``this`` module's source file
    (its rot13 text decoded; the module is not imported, which would print it). The text is the
    same in every Python 3 release, so the problem is too.

    Sequences of 32 characters, each position predicting the next, start at every character
    (stride 1); the title and the first 15 of the Zen's 19 aphorisms train, the last 4 test.
    Model: embedding 32, one LSTM layer of 64, dense to the vocabulary (DeepOBS's
    tolstoi_char_rnn: 2 LSTM layers of 128 over sequences of 50 of War and Peace).
    """

    name = "zen_char_rnn"
    deepobs = "tolstoi_char_rnn"
    description = "character LSTM on the Zen of Python (this.py)"
    batch_size = 50
    epochs = 200
    seq_len = 32
    train_lines = 17  # the title, a blank line and the first 15 aphorisms

    def data(self) -> tuple[Split, Split]:
        return _zen_data(self.seq_len, self.train_lines)

    def model(self) -> nn.Module:
        return _CharLSTM(len(zen_vocabulary()))

    def evaluate(self, model: nn.Module, inputs: Tensor, targets: Tensor | None) -> Batch:
        assert targets is not None
        logits = model(inputs)
        return _classify(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@lru_cache(maxsize=1)
def zen_of_python() -> str:
    """The Zen of Python, decoded from the source of the standard library's ``this`` module."""
    spec = importlib.util.find_spec("this")
    if spec is None or spec.origin is None:
        raise DataError(
            "the standard library's this.py (the Zen of Python) is not installed; "
            "the zen_char_rnn problem needs it"
        )
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "s" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return codecs.decode(node.value.value, "rot13")
    raise DataError(f"{spec.origin} holds no Zen of Python text (no string 's'); reinstall Python")


@lru_cache(maxsize=1)
def zen_vocabulary() -> str:
    """The Zen's distinct characters, sorted (the model's vocabulary)."""
    return "".join(sorted(set(zen_of_python())))


@lru_cache(maxsize=2)
def _zen_data(seq_len: int, train_lines: int) -> tuple[Split, Split]:
    text = zen_of_python()
    lines = text.splitlines(keepends=True)
    cut = sum(len(line) for line in lines[:train_lines])
    index = {c: i for i, c in enumerate(zen_vocabulary())}
    codes = torch.tensor([index[c] for c in text], dtype=torch.long)

    def windows(part: Tensor) -> Split:
        starts = torch.arange(len(part) - seq_len)
        offsets = torch.arange(seq_len)
        inputs = part[starts[:, None] + offsets]
        return Split(inputs, part[starts[:, None] + offsets + 1])

    return windows(codes[:cut]), windows(codes[cut:])


class _CharLSTM(nn.Module):
    def __init__(self, vocabulary: int, embedding: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocabulary)

    def forward(self, codes: Tensor) -> Tensor:
        hidden, _ = self.lstm(self.embed(codes))
        return self.out(hidden)


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (NoisyQuadratic(), DigitsMLP(), Digits2C2D(), DigitsAutoencoder(), ZenCharRNN())
}


def get_problem(name: str) -> Problem:
    """The problem called ``name``; an unknown name lists the known ones."""
    if name not in PROBLEMS:
        raise ConfigError(
            f"unknown optbench problem {name!r}; choose from {', '.join(PROBLEMS)} "
            "(ricordo optbench --list)"
        )
    return PROBLEMS[name]
