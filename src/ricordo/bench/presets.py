"""The standard continual-learning protocols by name: ``ricordo benchmark --preset seq-cifar10``.

A preset is a set of experiment keys (``ricordo.bench.experiment``) filled in before an
experiment file and the command-line options, which override it key by key (dict-valued keys
such as ``model_options`` merge). The numbers are those of Mammoth (github.com/aimagelab/mammoth)
and the DER paper (Buzzega et al. 2020, "Dark Experience for General Continual Learning"); where
each one comes from is in ``Preset.sources``, shown by ``ricordo benchmark --preset list``.

Mammoth's learning rate is per method (its "best arguments"); a preset sets the one Mammoth gives
plain SGD fine-tuning on that dataset, and ``--lr`` (or ``method_options``) sets a method's own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ricordo.errors import ConfigError

# Mammoth's "best arguments" table of the DER paper's code (commit 7ab9db9, 2020).
BEST_ARGS = "mammoth utils/best_args.py (commit 7ab9db9, DER paper code), 'sgd' entry"


def _normalize(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """A ``normalize=`` model option spelling out Mammoth's exact per-channel statistics."""
    return ",".join(str(v) for v in (*mean, *std))


@dataclass(frozen=True)
class Preset:
    """A named protocol: ``settings`` are experiment keys, ``sources`` say where each came from."""

    name: str
    description: str
    settings: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def _image_preset(
    name: str,
    description: str,
    *,
    dataset: str,
    classes: int,
    updates: int,
    epochs: int,
    lr: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    sources: dict[str, str],
    notes: str = "",
    dataset_options: dict[str, Any] | None = None,
) -> Preset:
    settings: dict[str, Any] = {
        "dataset": dataset,
        "scenario": "class-incremental",
        # Mammoth splits the classes in their natural order (0,1 | 2,3 | ...) for every seed.
        "scenario_options": {"class_order": list(range(classes))},
        "updates": updates,
        "model": "resnet18",
        "model_options": {"width": 64, "normalize": _normalize(mean, std)},
        "augment": "crop:4,flip",
        "epochs": epochs,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": lr,
        "momentum": 0.0,
        "weight_decay": 0.0,
    }
    if dataset_options:
        settings["dataset_options"] = dataset_options
    return Preset(name, description, settings, sources, notes)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "seq-mnist",
            "MNIST, 5 class-incremental tasks of 2 classes, MLP 2x100, 1 epoch, batch 10",
            {
                "dataset": "mnist",
                "scenario": "class-incremental",
                "scenario_options": {"class_order": list(range(10))},
                "updates": 5,
                "model": "mlp",
                "hidden": [100, 100],
                "epochs": 1,
                "batch_size": 10,
                "optimizer": "sgd",
                "lr": 0.03,
                "momentum": 0.0,
                "weight_decay": 0.0,
            },
            {
                "tasks": "mammoth datasets/seq_mnist.py: N_TASKS 5, N_CLASSES_PER_TASK 2",
                "model": "mammoth backbone/MNISTMLP.py: two hidden layers of 100 ReLU units",
                "epochs, batch_size, lr": f"{BEST_ARGS} for seq-mnist (1, 10, 0.03)",
                "optimizer": "mammoth utils/args.py: --optimizer sgd, --optim_mom 0, --optim_wd 0",
                "normalisation, augmentation": "mammoth datasets/seq_mnist.py: ToTensor only",
            },
            "Mammoth's current seq_mnist.py get_batch_size() says 64; the DER paper used 10.",
        ),
        _image_preset(
            "seq-cifar10",
            "CIFAR-10, 5 class-incremental tasks of 2 classes, ResNet-18, 50 epochs, batch 32",
            dataset="cifar10",
            classes=10,
            updates=5,
            epochs=50,
            lr=0.1,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2615),
            sources={
                "tasks, normalisation, augmentation": "mammoth datasets/seq_cifar10.py: 5x2, "
                "RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize(MEAN, STD)",
                "epochs, batch_size": "mammoth datasets/seq_cifar10.py get_epochs() 50, "
                "get_batch_size() 32",
                "lr": f"{BEST_ARGS} for seq-cifar10 (0.1)",
                "model": "mammoth backbone/ResNetBlock.py resnet18, nf=64",
                "optimizer": "mammoth utils/args.py: --optimizer sgd, --optim_mom 0, --optim_wd 0",
            },
        ),
        _image_preset(
            "seq-cifar100",
            "CIFAR-100, 10 class-incremental tasks of 10 classes, ResNet-18, 50 epochs, batch 32",
            dataset="cifar100",
            classes=100,
            updates=10,
            epochs=50,
            lr=0.1,
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            sources={
                "tasks, normalisation, augmentation": "mammoth datasets/seq_cifar100.py: 10x10, "
                "RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize(MEAN, STD)",
                "epochs, batch_size": "mammoth datasets/seq_cifar100.py get_epochs() 50, "
                "get_batch_size() 32",
                "lr": "not in Mammoth's tables for this dataset: seq-cifar10's 0.1",
                "model": "mammoth backbone/ResNetBlock.py resnet18, nf=64",
                "optimizer": "mammoth utils/args.py: --optimizer sgd, --optim_mom 0, --optim_wd 0",
            },
            notes="Mammoth also decays the lr by 10 at epochs 35 and 45 (multisteplr); Ricordo "
            "has no lr schedule, so this preset trains at a constant lr.",
        ),
        _image_preset(
            "seq-tinyimagenet",
            "Tiny ImageNet (64x64), 10 class-incremental tasks of 20 classes, ResNet-18, "
            "100 epochs, batch 32",
            dataset="image-folder",
            dataset_options={"size": 64, "mode": "RGB"},
            classes=200,
            updates=10,
            epochs=100,
            lr=0.03,
            mean=(0.4802, 0.4480, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            sources={
                "tasks, normalisation, augmentation": "mammoth datasets/seq_tinyimagenet.py: "
                "10x20, RandomCrop(64, padding=4), RandomHorizontalFlip, Normalize(MEAN, STD)",
                "epochs, batch_size, lr": f"{BEST_ARGS} for seq-tinyimg (100, 32, 0.03)",
                "model": "mammoth backbone/ResNetBlock.py resnet18, nf=64",
                "optimizer": "mammoth utils/args.py: --optimizer sgd, --optim_mom 0, --optim_wd 0",
            },
            notes="Ricordo has no Tiny ImageNet downloader: pass --data-dir FOLDER holding "
            "train/<class>/ and test/<class>/ image folders (the official val/ images sorted by "
            "val_annotations.txt). Mammoth's current get_epochs() says 50; the DER paper used 100.",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset ``name``; an unknown name fails in one line listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} "
            "(ricordo benchmark --preset list describes them)"
        )
    return PRESETS[name]


def preset_settings(name: str) -> dict[str, Any]:
    """A fresh copy of the experiment keys of preset ``name`` (callers may change it)."""
    return copy.deepcopy(get_preset(name).settings)


def describe_presets() -> str:
    """The ``--preset list`` text: each preset, its settings and where they come from."""
    lines: list[str] = []
    for preset in PRESETS.values():
        lines.append(f"{preset.name}: {preset.description}")
        for key, value in preset.settings.items():
            lines.append(f"    {key}: {_show(value)}")
        for what, where in preset.sources.items():
            lines.append(f"    source of {what}: {where}")
        if preset.notes:
            lines.append(f"    note: {preset.notes}")
        lines.append("")
    lines.append("Options given with --preset override its settings, e.g. --epochs 1 or --lr 0.03.")
    return "\n".join(lines)


def _show(value: Any) -> str:
    # A long class order 0..N-1 shortened, so the listing stays readable.
    if isinstance(value, list) and len(value) > 12 and value == list(range(len(value))):
        return f"[0, 1, ..., {len(value) - 1}]"
    return str(value)
