"""User model code: portable references, hashes, binding to a state's spec, and one-line errors.

A spec never makes Ricordo import anything: the code comes from the caller and must hash to
what the spec recorded (or the caller accepts the change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ricordo.errors import ConfigError, ModelCodeError
from ricordo.models import bind_code, build_model, make_spec, num_outputs, resolve_code
from ricordo.models.code import is_module_reference

MODEL = """
from torch import nn

def model_fn(input_shape, num_classes, width: int = 8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 2))
"""
# A payload: running it leaves a marker file behind.
PAYLOAD = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")

def model_fn(**kwargs):
    raise SystemExit("never")
"""


def _spec(code: object, **extra: object) -> dict:
    return make_spec(
        model="mlp",
        input_shape=(1, 8, 8),
        num_classes=3,
        hidden=(16,),
        config=code,  # type: ignore[arg-type]
        options=dict(extra),
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "custom_model.py"
    path.write_text(MODEL)
    return path


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable package ``ricordo_test_pkg`` with ``nets.make_model``."""
    root = tmp_path / "site"
    pkg = root / "ricordo_test_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL.replace("def model_fn", "def make_model"))
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("ricordo_test_pkg")]:
        del sys.modules[name]


def test_a_file_is_recorded_by_name_and_hash_only(model_file: Path) -> None:
    code = resolve_code(str(model_file))
    spec = _spec(code, width=4)
    assert {k: spec[k] for k in ("kind", "source", "function", "source_type")} == {
        "kind": "code",
        "source": "custom_model.py",
        "function": "model_fn",
        "source_type": "file",
    }
    assert spec["sha256"] == hashlib.sha256(MODEL.encode()).hexdigest()
    assert str(model_file.parent) not in json.dumps(spec)
    assert num_outputs(build_model(spec, 0, code)) == 3


def test_module_function_references(package: Path) -> None:
    assert is_module_reference("ricordo_test_pkg.nets:make_model")
    assert not is_module_reference("custom_model.py") and not is_module_reference("a/b.py:fn")
    code = resolve_code("ricordo_test_pkg.nets:make_model")
    assert "ricordo_test_pkg.nets" not in sys.modules  # hashed from its file, not imported yet
    assert code.reference == "ricordo_test_pkg.nets:make_model"
    assert code.sha256 == hashlib.sha256((package / "nets.py").read_bytes()).hexdigest()
    spec = _spec(code)
    assert spec["source_type"] == "module" and spec["function"] == "make_model"
    assert num_outputs(build_model(spec, 0, code)) == 3


def test_unknown_module_and_function_are_one_line(package: Path) -> None:
    with pytest.raises(ConfigError, match="cannot find module 'ricordo_test_pkg.nope'"):
        resolve_code("ricordo_test_pkg.nope:make_model")
    code = resolve_code("ricordo_test_pkg.nets:missing")
    with pytest.raises(ConfigError, match="module ricordo_test_pkg.nets has no function missing"):
        build_model(_spec(code), 0, code)


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad_model.py"
    bad.write_text("from torch import nn\n\ndef model_fn(:\n    pass\n")
    code = resolve_code(str(bad))
    with pytest.raises(ConfigError) as exc:
        build_model(_spec(code), 0, code)
    message = str(exc.value)
    assert f"syntax error at {bad.resolve()}, line 3" in message and "\n" not in message


def test_code_that_raises_on_import_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "raising.py"
    bad.write_text("import torch\n\nx = 1\nraise RuntimeError('no GPU here')\n")
    code = resolve_code(str(bad))
    with pytest.raises(ConfigError) as exc:
        build_model(_spec(code), 0, code)
    message = str(exc.value)
    assert "raised RuntimeError: no GPU here" in message
    assert f"at {bad.resolve()}, line 4" in message and "\n" not in message


def test_a_module_with_a_syntax_error_is_one_line(package: Path) -> None:
    (package / "broken.py").write_text("def make_model(\n")
    code = resolve_code("ricordo_test_pkg.broken:make_model")
    with pytest.raises(ConfigError, match=r"broken.py, line 1"):
        build_model(_spec(code), 0, code)


def test_a_builder_that_raises_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def model_fn(**kw):\n    raise ValueError('width must be even')\n")
    code = resolve_code(str(path))
    with pytest.raises(
        ConfigError, match=r"raised ValueError: width must be even at .*m.py, line 2"
    ):
        build_model(_spec(code), 0, code)


def test_a_spec_of_user_code_builds_nothing_without_the_code(model_file: Path) -> None:
    spec = _spec(resolve_code(str(model_file)))
    with pytest.raises(ModelCodeError, match="needs its model code custom_model.py"):
        build_model(spec, 0)


def test_bind_code_requires_the_recorded_hash(
    model_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(resolve_code(str(model_file)))
    old = spec["sha256"]
    with pytest.raises(ModelCodeError) as exc:
        bind_code(spec, None, accept_change=False, url="S")
    message = str(exc.value)
    assert f"needs its model code custom_model.py (sha256 {old[:12]})" in message
    assert "model='custom_model.py'" in message and "--config custom_model.py" in message

    changed = tmp_path / "custom_model_v2.py"
    changed.write_text(MODEL.replace("width: int = 8", "width: int = 9"))
    new = hashlib.sha256(changed.read_bytes()).hexdigest()
    with pytest.raises(ModelCodeError) as exc:
        bind_code(spec, resolve_code(str(changed)), accept_change=False, url="S")
    message = str(exc.value)
    assert new[:12] in message and old[:12] in message and "--accept-model-change" in message

    with caplog.at_level(logging.WARNING):
        bound = bind_code(spec, resolve_code(str(changed)), accept_change=True, url="S")
    assert bound["sha256"] == new and bound["source"] == "custom_model_v2.py"
    assert "differs" in caplog.text

    # The same content under another name matches; the recorded name is kept.
    renamed = tmp_path / "renamed.py"
    renamed.write_text(MODEL)
    assert bind_code(spec, resolve_code(str(renamed)), accept_change=False, url="S") == spec


def test_a_builtin_spec_takes_no_code(model_file: Path) -> None:
    spec = _spec(None)
    assert bind_code(spec, None, accept_change=False, url="S") is spec
    with pytest.raises(ConfigError, match="built-in model 'mlp' and needs no model code"):
        bind_code(spec, resolve_code(str(model_file)), accept_change=False, url="S")


@pytest.mark.parametrize("recorded", ["absolute", "relative"])
def test_an_old_config_spec_never_imports_its_path(
    tmp_path: Path, model_file: Path, recorded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.py"
    payload.write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)  # a relative "payload.py" would resolve here if it were opened
    path = str(payload) if recorded == "absolute" else "payload.py"
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    spec = {**_spec(None), "kind": "config", "path": path, "sha256": sha}
    del spec["name"], spec["hidden"]
    with pytest.raises(
        ModelCodeError, match=f"needs its model code payload.py \\(sha256 {sha[:12]}\\)"
    ):
        bind_code(spec, None, accept_change=False, url="S")
    with pytest.raises(ModelCodeError):
        build_model(spec, 0)
    with pytest.raises(ModelCodeError, match="has sha256"):
        bind_code(spec, resolve_code(str(model_file)), accept_change=False, url="S")
    assert not marker.exists()
    # The user's own code with the recorded hash is what binds; the path is dropped.
    own = tmp_path / "mine.py"
    own.write_text(MODEL)
    spec["sha256"] = hashlib.sha256(MODEL.encode()).hexdigest()
    bound = bind_code(spec, resolve_code(str(own)), accept_change=False, url="S")
    assert bound["kind"] == "code" and "path" not in bound and bound["source"] == "payload.py"
    assert num_outputs(build_model(bound, 0, resolve_code(str(own)))) == 3
    assert not marker.exists()


def make_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Linear(4, num_classes))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_callables_and_modules_are_hashed_by_their_source_file() -> None:
    this_file = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    code = resolve_code(make_net)
    assert code.sha256 == this_file and code.reference.endswith(":make_net")
    assert num_outputs(build_model(_spec(code), 0, code)) == 3


def test_an_instance_is_bound_by_its_weights_not_a_hash(model_file: Path) -> None:
    spec = _spec(resolve_code(str(model_file)))
    instance = TinyNet()
    code = resolve_code(instance)
    bound = bind_code(spec, code, accept_change=False, url="S")
    assert bound == spec  # the state's code stays recorded; the weights must fit (see updater)
    model = build_model(bound, 0, code)
    assert model is instance and num_outputs(model) == 3  # grown in place to the spec's classes
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
