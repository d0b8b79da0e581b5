"""Your own model in Python: pass an ``nn.Module`` (or a function that builds one) as ``model``.

Run it where you installed: ``.venv/bin/python examples/custom_model_python.py``. It writes the
states ``own-model/v0`` and ``own-model/v1`` in the current folder (delete ``own-model/`` to run
it again: Ricordo never overwrites a state unless asked to); tests/test_own_model.py runs it.

The Updater trains a copy of the module you pass (yours is left as it is; ``updater.model`` is
the trained one) and grows its last ``nn.Linear`` when new classes arrive. The state records the
model by a portable reference (``module:ClassName`` and the sha256 of the file defining it) and
never runs code: the job that loads it passes the model again, here a new ``Net()``, into which
the state's weights are loaded (they must fit it name for name and shape for shape).
"""

import torch
from torch import nn

from ricordo import Updater
from ricordo.data import load_builtin, make_scenario


class Net(nn.Module):
    """A small CNN for 1x8x8 digits; ends in the nn.Linear that Ricordo grows per new class."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.ReLU(), nn.Flatten()
        )
        self.head = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model_fn: Ricordo passes the data's feature shape and the number of classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1] * input_shape[-2], num_classes))


torch.manual_seed(0)
train, test = load_builtin("digits")
scenario = make_scenario("class-incremental", train, test, updates=5, seed=0)

# 1. An nn.Module instance: the lineage's first model.
updater = Updater(model=Net(), method="er", memory_size=200, epochs=5, lr=0.05)
updater.update(scenario.train[0])
updater.save("own-model/v0")
print("recorded as", updater.config.config)  # __main__:Net, plus its file's sha256 in the state

# The next job: a state never runs code, so pass the model again (a new instance).
updater = Updater.load("own-model/v0", model=Net())
updater.update(scenario.train[1])
updater.save("own-model/v1")
again = Updater.load("own-model/v1", model=Net())
inputs = scenario.test[0].x
assert torch.equal(again.predict_logits(inputs), updater.predict_logits(inputs))  # bit for bit
print(again.evaluate(scenario.test_all()))

# 2. A function that builds the model (or "pkg.module:make_net", or a .py file with model_fn).
built = Updater(model=make_net, method="er", memory_size=200, epochs=5)
built.update(scenario.train[0])
print("recorded as", built.config.config)  # __main__:make_net
