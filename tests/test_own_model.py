"""Your own model in Python (issue 10.1): ``Updater(model=...)`` takes an nn.Module, a callable
that builds one, ``"module:function"`` or a .py file besides the built-in names.

Before, ``model`` took only a built-in name: an nn.Module failed with "unknown model
Sequential(...)" at the first update. The state records a portable reference (module:qualname,
sha256 of the source file) and reloads only from code the caller passes.
"""

from __future__ import annotations

import hashlib
import runpy
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ricordo import Updater
from ricordo.errors import ConfigError, ModelCodeError, TrainingDivergedError
from ricordo.models import num_outputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_model_python.py"
THIS_FILE_SHA = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


class Net(nn.Module):
    def __init__(self, outputs: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_net(input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(np.prod(input_shape)), width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def chunk(classes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(classes), 12)
    x = rng.normal(size=(len(y), 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    return x, y


OPTIONS = {"method": "er", "memory_size": 20, "epochs": 2, "batch_size": 8, "progress": False}


def test_an_nn_module_round_trips_through_save_and_load_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    first, second = chunk((0, 1), 1), chunk((2, 3), 2)

    updater = Updater(model=net, **OPTIONS)
    updater.update(*first)
    spec = updater.model_spec
    assert spec is not None
    assert (spec["source"], spec["function"], spec["source_type"]) == (
        Net.__module__,
        "Net",
        "instance",
    )
    assert spec["sha256"] == THIS_FILE_SHA  # the class's source file, never its path
    assert updater.config.config == f"{Net.__module__}:Net"
    assert str(tmp_path) not in str(spec) and "/" not in str(updater.config.to_dict()["config"])
    updater.save(str(tmp_path / "v0"))

    # The caller's module is left as passed: the lineage trained (and grew) a copy.
    assert updater.model is not net and num_outputs(net) == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    loaded = Updater.load(str(tmp_path / "v0"), model=Net())  # a fresh instance, 2 outputs
    x = torch.as_tensor(second[0])
    assert torch.equal(loaded.predict_logits(x), updater.predict_logits(x))

    # Continuing after the reload gives the same model as an uninterrupted lineage.
    loaded.update(*second)
    updater.update(*second)
    assert num_outputs(loaded.model) == 4
    assert torch.equal(loaded.predict_logits(x), updater.predict_logits(x))
    loaded.save(str(tmp_path / "v1"))
    again = Updater.load(str(tmp_path / "v1"), model=Net())
    assert torch.equal(again.predict_logits(x), updater.predict_logits(x))


def test_a_model_fn_callable_builds_the_model_and_reloads(tmp_path: Path) -> None:
    updater = Updater(model=make_net, model_options={"width": 12}, **OPTIONS)
    updater.update(*chunk((0, 1, 2), 3))
    assert updater.config.config == f"{make_net.__module__}:make_net"
    assert updater.model_spec is not None and updater.model_spec["sha256"] == THIS_FILE_SHA
    assert num_outputs(updater.model) == 3 and updater.model[1].out_features == 12
    updater.save(str(tmp_path / "v0"))

    loaded = Updater.load(str(tmp_path / "v0"), model=make_net)
    x = torch.as_tensor(chunk((0, 1, 2), 4)[0])
    assert torch.equal(loaded.predict_logits(x), updater.predict_logits(x))


def test_a_state_of_your_model_is_refused_without_the_code(tmp_path: Path) -> None:
    updater = Updater(model=Net(), **OPTIONS)
    updater.update(*chunk((0, 1), 5))
    updater.save(str(tmp_path / "v0"))
    files = {p: p.read_bytes() for p in (tmp_path / "v0").rglob("*") if p.is_file()}

    with pytest.raises(
        ModelCodeError,
        match=r"needs its model, an instance of .*:Net.*never "
        r"runs code.*Updater\.load\(url, model=",
    ) as info:
        Updater.load(str(tmp_path / "v0"))
    assert "\n" not in str(info.value)
    # A function from another file is other code: refused, with both hashes' remedy named.
    with pytest.raises(
        ModelCodeError,
        match=r"pass a new instance of the model .*"
        r"accept_model_change=True",
    ):
        Updater.load(str(tmp_path / "v0"), model=nn.Sequential)
    assert {p: p.read_bytes() for p in (tmp_path / "v0").rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("value", [42, 1.5, ["mlp"], {"layers": 2}])
def test_a_wrong_model_type_is_one_line(value: object) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"model= got a {type(value).__name__} .*built-in model "
        r"name \(.*mlp.*\), an nn\.Module, a function that returns one",
    ) as info:
        Updater(model=value)
    assert "\n" not in str(info.value)


def test_model_accepts_a_file_and_a_module_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (ROOT / "examples" / "custom_model.py").read_text()
    model_file = tmp_path / "code" / "my_model.py"
    model_file.parent.mkdir()
    model_file.write_text(source)
    by_file = Updater(model=str(model_file), model_options={"width": 8}, **OPTIONS)
    assert by_file.config.config == "my_model.py"  # the portable name, not this machine's path
    by_file.update(*chunk((0, 1), 6))
    assert by_file.model_spec is not None and by_file.model_spec["source_type"] == "file"

    package = tmp_path / "pkg_own_model"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pkg_own_model", raising=False)
    by_module = Updater(model="pkg_own_model.nets:model_fn", **OPTIONS)
    by_module.update(*chunk((0, 1), 6))
    assert by_module.config.config == "pkg_own_model.nets:model_fn"
    by_module.save(str(tmp_path / "m0"))
    loaded = Updater.load(str(tmp_path / "m0"), model="pkg_own_model.nets:model_fn")
    x = torch.as_tensor(chunk((0, 1), 7)[0])
    assert torch.equal(loaded.predict_logits(x), by_module.predict_logits(x))

    with pytest.raises(ConfigError, match=r"model config file 'missing_model\.py' not found"):
        Updater(model="missing_model.py")


def test_positional_model_file(tmp_path: Path) -> None:
    """``Updater("my_model.py")``: the first positional parameter takes a model file too."""
    model_file = tmp_path / "my_model.py"
    model_file.write_text((ROOT / "examples" / "custom_model.py").read_text())
    updater = Updater(str(model_file), **OPTIONS)
    updater.update(*chunk((0, 1), 8))
    assert updater.config.config == "my_model.py"
    assert updater.model_spec is not None and updater.model_spec["source_type"] == "file"


def test_builtin_names_still_work_and_unknown_names_list_them() -> None:
    updater = Updater(model="cnn", **OPTIONS)
    updater.update(*chunk((0, 1), 9))
    assert updater.model_spec is not None and updater.model_spec["kind"] == "builtin"
    assert updater.config.model == "cnn" and updater.config.config is None
    with pytest.raises(ConfigError, match=r"unknown model 'no-such-net'; choose one of: .*mlp"):
        Updater(model="no-such-net").update(*chunk((0, 1), 9))


def test_model_and_config_together_are_refused(tmp_path: Path) -> None:
    model_file = tmp_path / "my_model.py"
    model_file.write_text((ROOT / "examples" / "custom_model.py").read_text())
    with pytest.raises(ConfigError, match=r"model=.*and config= both name model code"):
        Updater(model=Net(), config=str(model_file))
    with pytest.raises(ConfigError, match=r"model=.*and config= both name model code"):
        Updater(str(model_file), model=make_net)


def test_an_instance_must_match_num_classes_or_is_grown() -> None:
    with pytest.raises(
        ConfigError,
        match=r"has 5 outputs but num_classes=3 .*build the "
        r"nn\.Module with a last nn\.Linear of 3 outputs",
    ):
        Updater(model=Net(5), num_classes=3, **OPTIONS).update(*chunk((0, 1), 10))
    narrow = Updater(model=Net(2), num_classes=4, **OPTIONS)  # narrower: grown, as code models
    narrow.update(*chunk((0, 1), 10))
    assert num_outputs(narrow.model) == 4


def test_the_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert (tmp_path / "own-model" / "v1" / "manifest.json").is_file()


def test_model_code_goes_to_the_updater_not_the_config_or_an_update() -> None:
    from ricordo import UpdateConfig

    with pytest.raises(ConfigError, match=r"takes a built-in model's name, not a Net; .*Updater"):
        UpdateConfig(model=Net())
    updater = Updater(**OPTIONS)
    with pytest.raises(ConfigError, match=r"not a function; pass your own nn\.Module") as info:
        updater.update(*chunk((0, 1), 11), model=make_net)
    assert "\n" not in str(info.value)
    updater.update(*chunk((0, 1), 11))  # left as before: the built-in mlp trains
    assert updater.model_spec is not None and updater.model_spec["name"] == "mlp"


def test_a_failed_first_update_starts_again_from_the_module_passed() -> None:
    torch.manual_seed(1)
    net = Net()
    x, y = chunk((0, 1, 2), 12)
    failing = Updater(model=net, **OPTIONS)
    with pytest.raises(TrainingDivergedError):  # after the model was built, grown and trained
        failing.update(x, y, lr=1e30, momentum=0.9)
    assert failing.model is None and num_outputs(net) == 2
    failing.update(x, y)
    direct = Updater(model=net, **OPTIONS)
    direct.update(x, y)
    probe = torch.as_tensor(x)
    assert torch.equal(failing.predict_logits(probe), direct.predict_logits(probe))


def test_a_module_that_cannot_be_copied_is_one_line() -> None:
    net = Net()
    net.lock = threading.Lock()  # type: ignore[assignment]  # deepcopy cannot copy a lock
    with pytest.raises(
        ConfigError,
        match=r"cannot copy the Net passed as model= \(TypeError: .*"
        r"pass the function that builds it instead",
    ) as info:
        Updater(model=net, **OPTIONS).update(*chunk((0, 1), 13))
    assert "\n" not in str(info.value)
