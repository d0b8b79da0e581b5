"""Plugins through entry points (issue 10.5): the package in tests/plugin_example is installed
into a temporary folder (pip, offline), then its method, model and dataset are used from Python
and from a real ``ricordo`` process; broken, wrongly typed and clashing plugins are skipped with
one line each while the others keep working."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ricordo.data import DATASETS, load_builtin
from ricordo.errors import ConfigError
from ricordo.methods import METHODS
from ricordo.methods.er import ExperienceReplay
from ricordo.models import MODELS
from ricordo.models.builtin import mlp

EXAMPLE = Path(__file__).parent / "plugin_example"
MODULE = "ricordo_plugin_example"
REGISTRIES = (METHODS, MODELS, DATASETS)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugin_example installed with pip into a folder of its own (no network, no
    dependencies; built from a copy so the source folder gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "src")
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (site / f"{MODULE}.py").is_file()
    return site


def _write_dist(site: Path, name: str, entry_points: str, module: str = "") -> None:
    """A minimal installed distribution: METADATA and entry_points.txt (and a module)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module:
        (site / f"{name.replace('-', '_')}.py").write_text(module)


@pytest.fixture
def bad_site(tmp_path: Path) -> Path:
    """Three bad plugins: one that fails to import, one naming a non-callable model, and one
    whose method and model take built-in names ('er' and 'mlp')."""
    site = tmp_path / "bad"
    _write_dist(site, "broken-plugin", "[ricordo.methods]\nbad = ricordo_missing_module:Nope\n")
    _write_dist(
        site,
        "wrong-plugin",
        "[ricordo.models]\nnot-a-factory = wrong_plugin:VALUE\n",
        "VALUE = 3\n",
    )
    _write_dist(
        site,
        "clash-plugin",
        "[ricordo.methods]\ner = clash_plugin:ClashER\n[ricordo.models]\nmlp = clash_plugin:mlp\n",
        "from ricordo.methods.er import ExperienceReplay\n\n"
        "class ClashER(ExperienceReplay):\n    summary = 'not the built-in'\n\n"
        "def mlp(input_shape, num_classes, hidden=()):\n    raise AssertionError('plugin ran')\n",
    )
    return site


def _use(*sites: Path) -> None:
    for site in sites:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()  # importlib.metadata caches what each path holds
    for registry in REGISTRIES:
        registry.reset_plugins()


@pytest.fixture
def on_path(plugin_site: Path) -> Iterator[list[Path]]:
    """Puts plugin folders on sys.path (the example first), with fresh plugin registries;
    everything is undone afterwards."""
    sites = [plugin_site]
    before = list(sys.path)
    _use(plugin_site)
    try:
        yield sites
    finally:
        sys.path[:] = before
        for name in (MODULE, "wrong_plugin", "clash_plugin"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        for registry in REGISTRIES:
            registry.reset_plugins()


def test_plugins_load_on_first_lookup_not_at_import(on_path: list[Path]) -> None:
    assert MODULE not in sys.modules  # importing ricordo (done above) imported no plugin
    assert "plugin-er" in METHODS.names()
    assert MODULE in sys.modules
    assert METHODS.origin("plugin-er") == "ricordo-plugin-example"
    assert METHODS.origin("er") is None
    assert MODELS.origin("tiny-mlp") == "ricordo-plugin-example"
    assert DATASETS.origin("blobs") == "ricordo-plugin-example"


def test_without_the_plugin_its_names_are_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown method 'plugin-er'; choose one of: a-gem"):
        METHODS.get("plugin-er")


def test_plugin_method_model_and_dataset_from_python(on_path: list[Path], tmp_path: Path) -> None:
    from ricordo import Updater

    train, test = load_builtin("blobs", classes=3)
    assert len(train) == 150 and len(test) == 30
    updater = Updater(
        method="plugin-er", model="tiny-mlp", hidden=(8,), memory_size=20, epochs=5, seed=0
    )
    assert type(updater.method).__name__ == "PluginER"
    updater.update(train)
    # tiny-mlp's layers (Flatten, Linear, ReLU, Linear), not the built-in mlp's
    assert [type(layer).__name__ for layer in updater.model] == [
        "Flatten", "Linear", "ReLU", "Linear"
    ]  # fmt: skip
    assert updater.model[1].out_features == 8
    updater.save(str(tmp_path / "v0"))
    again = Updater.load(str(tmp_path / "v0"))
    assert type(again.method).__name__ == "PluginER" and len(again.memory) == 20
    assert again.evaluate(test)["accuracy"] == updater.evaluate(test)["accuracy"]

    # Uninstalled: loading the state names the package to install.
    sys.path.remove(str(on_path[0]))
    _use()
    with pytest.raises(
        ConfigError,
        match=r"^the state at .*v0 uses the method 'plugin-er' of the plugin package "
        r"'ricordo-plugin-example', which is not installed here; install it \(pip install "
        r"ricordo-plugin-example\) to continue it$",
    ):
        Updater.load(str(tmp_path / "v0"))


def _run(*args: object, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1", COLUMNS="200")
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run(
        [sys.executable, "-m", "ricordo.cli", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_plugin_dataset_method_and_model_from_the_cli(plugin_site: Path, tmp_path: Path) -> None:
    chunks = tmp_path / "chunks"
    data = _run(
        "data", "blobs", "--out", chunks, "--updates", "3", "--dataset-option", "classes=6",
        pythonpath=[plugin_site],
    )  # fmt: skip
    assert data.returncode == 0, data.stderr
    assert "chunk 2: classes" in data.stdout and "100 train / 20 test" in data.stdout
    listed = _run("methods", pythonpath=[plugin_site])
    assert listed.returncode == 0, listed.stderr
    assert (
        "plugin-er   --memory-size                    Experience replay from the "
        "ricordo-plugin-example package. [plugin: ricordo-plugin-example]"
    ) in listed.stdout.splitlines()
    assert "[plugin" not in listed.stdout.replace("[plugin: ricordo-plugin-example]", "")

    states = tmp_path / "states"
    first = _run(
        "update", "--method", "plugin-er", "--model", "tiny-mlp", "--memory-size", "50",
        "--epochs", "2", "--data", chunks / "train-0.npz", "--next-state", states / "v0",
        pythonpath=[plugin_site],
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "update 0 (plugin-er)" in first.stdout
    manifest = json.loads((states / "v0" / "manifest.json").read_text())
    assert manifest["meta"]["plugins"] == {
        "method": {"name": "plugin-er", "package": "ricordo-plugin-example"},
        "model": {"name": "tiny-mlp", "package": "ricordo-plugin-example"},
    }
    second = _run(
        "update", "--state", states / "v0", "--data", chunks / "train-1.npz",
        "--next-state", states / "v1", pythonpath=[plugin_site],
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "update 1 (plugin-er)" in second.stdout

    # Without the plugin installed, continuing the lineage is one line, and nothing is written.
    before = sorted(p.relative_to(states).as_posix() for p in states.rglob("*"))
    missing = _run(
        "update", "--state", states / "v1", "--data", chunks / "train-2.npz",
        "--next-state", states / "v2",
    )  # fmt: skip
    assert missing.returncode == 1
    assert [line for line in missing.stderr.splitlines() if line.strip()] == [
        f"ricordo: error: the state at {states / 'v1'} uses the method 'plugin-er' of the plugin "
        "package 'ricordo-plugin-example', which is not installed here; install it (pip install "
        "ricordo-plugin-example) to continue it"
    ]
    assert sorted(p.relative_to(states).as_posix() for p in states.rglob("*")) == before


def test_broken_wrong_and_clashing_plugins_are_skipped(
    on_path: list[Path], bad_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _use(bad_site)
    with caplog.at_level(logging.WARNING, logger="ricordo.plugins"):
        assert "plugin-er" in METHODS  # the good plugin still loads
        assert METHODS.get("er") is ExperienceReplay  # built-ins win
        assert "bad" not in METHODS
        assert MODELS.get("mlp") is mlp
        assert "tiny-mlp" in MODELS and "not-a-factory" not in MODELS
    messages = sorted(record.getMessage() for record in caplog.records)
    assert messages == [
        "plugin package 'broken-plugin' skipped: its method entry point 'bad' "
        "(ricordo_missing_module:Nope) failed: ModuleNotFoundError: No module named "
        "'ricordo_missing_module'; fix or uninstall the package",
        "plugin package 'clash-plugin' registers method 'er', a built-in name: refused, the "
        "built-in 'er' is used; rename it in the package's entry points",
        "plugin package 'clash-plugin' registers model 'mlp', a built-in name: refused, the "
        "built-in 'mlp' is used; rename it in the package's entry points",
        "plugin package 'wrong-plugin' skipped: its model entry point 'not-a-factory' "
        "(wrong_plugin:VALUE) failed: PluginError: 3 is not a callable model factory; fix or "
        "uninstall the package",
    ]


def test_bad_plugins_from_the_cli_warn_one_line_each(plugin_site: Path, bad_site: Path) -> None:
    helped = _run("--help", pythonpath=[plugin_site, bad_site])
    assert helped.returncode == 0 and helped.stderr == ""  # --help imports no plugin
    result = _run("methods", pythonpath=[plugin_site, bad_site])
    assert result.returncode == 0, result.stderr
    lines = sorted(line for line in result.stderr.splitlines() if line.strip())
    assert len(lines) == 2, result.stderr  # `methods` loads the method plugins only
    assert lines[0].startswith("plugin package 'broken-plugin' skipped: its method entry point")
    assert lines[1].startswith("plugin package 'clash-plugin' registers method 'er', a built-in")
    assert "[plugin: ricordo-plugin-example]" in result.stdout
    assert "not the built-in" not in result.stdout


def test_a_builtin_registered_after_a_plugin_still_wins(
    on_path: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    assert "tiny-mlp" in MODELS
    with caplog.at_level(logging.ERROR, logger="ricordo.plugins"):
        MODELS.register("tiny-mlp")(mlp)
    try:
        assert MODELS.get("tiny-mlp") is mlp and MODELS.origin("tiny-mlp") is None
        assert [r.getMessage() for r in caplog.records] == [
            "plugin package 'ricordo-plugin-example' registers model 'tiny-mlp', a built-in "
            "name: refused, the built-in 'tiny-mlp' is used; rename it in the package's entry "
            "points"
        ]
    finally:
        MODELS._items.pop("tiny-mlp")


def test_of_two_plugins_with_one_name_the_first_on_the_path_is_kept(
    on_path: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "twin"
    _write_dist(
        site,
        "twin-plugin",
        "[ricordo.models]\ntiny-mlp = twin_plugin:tiny_mlp\n",
        "def tiny_mlp(input_shape, num_classes, hidden=()):\n    raise AssertionError\n",
    )
    _use(site)  # before the example on sys.path
    try:
        with caplog.at_level(logging.ERROR, logger="ricordo.plugins"):
            assert MODELS.origin("tiny-mlp") == "twin-plugin"
        assert [r.getMessage() for r in caplog.records] == [
            "plugin package 'ricordo-plugin-example' registers model 'tiny-mlp', which plugin "
            "package 'twin-plugin' already registered: refused, the first is used; uninstall "
            "one of them"
        ]
    finally:
        sys.modules.pop("twin_plugin", None)
