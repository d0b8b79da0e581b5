"""Data larger than RAM: train on a chunk read sample by sample through a DataLoader.

Run it where you installed: ``.venv/bin/python examples/lazy_data.py``. Nothing is written.

``LazyDataset`` wraps any map-style torch ``Dataset`` of ``(x, y)`` items (here digits read one
at a time, standing in for files on disk). Its labels are read up front (``labels=``, else the
dataset's ``targets``, else one pass); the samples are read batch by batch in ``data_workers``
processes while training, and ``transform`` (a random shift here) runs there on each sample,
afresh every epoch. The memory stores the raw samples; the rows it replays get the transform
too. Evaluation reads lazily as well, without the transform.
"""

import torch
from torch.utils.data import Dataset

from ricordo import Updater
from ricordo.data import ArrayDataset, LazyDataset, load_builtin, make_scenario


class Digits(Dataset):
    """One (1, 8, 8) image and its label per index, as a dataset of files would return them."""

    def __init__(self, data) -> None:
        self.data = data
        self.targets = data.y  # labels without reading the images (LazyDataset uses them)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.x[i], int(self.data.y[i])


def shift(x: torch.Tensor) -> torch.Tensor:
    """A random translation by up to one pixel (torch's random numbers: seeded per worker)."""
    dy, dx = torch.randint(-1, 2, (2,)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def main() -> None:
    train, test = load_builtin("digits")
    scenario = make_scenario("class-incremental", train, test, updates=2, seed=0)
    updater = Updater(method="der++", memory_size=200, epochs=5, data_workers=2, progress=False)
    for k, chunk in enumerate(scenario.train):
        record = updater.update(LazyDataset(Digits(chunk), transform=shift))
        seen = LazyDataset(Digits(ArrayDataset.concat(scenario.test[: k + 1])))
        accuracy = updater.evaluate(seen)["accuracy"]
        print(f"update {k}: {record['data']['samples']} samples, accuracy so far {accuracy:.3f}")


if __name__ == "__main__":  # DataLoader workers may re-import this file
    main()
