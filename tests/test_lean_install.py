"""The lean install (issue 10, item 6): what the base install needs, and what moved to extras.

- Lightning is the ``fabric`` extra: float32 on one device never imports it; asking for mixed
  precision without it is a one-line error naming ``pip install "ricordo[fabric]"``.
- CSV files are parsed by pyarrow when it is installed, with the same columns, names, dtypes
  and values as the built-in reader, which still reports every malformed file.
- Method parameter notes are ``dataclasses.field`` metadata, not parsed source comments.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from ricordo.data import Scenario, loaders
from ricordo.errors import ConfigError, DataError
from ricordo.methods import METHODS
from ricordo.methods.describe import describe
from ricordo.updater import Updater

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(epochs=1, lr=0.1, memory_size=20, progress=False, hidden=(16,))
FABRIC_FIX = 'pip install "ricordo[fabric]"'


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object
) -> tuple[int, str, str]:
    """``ricordo ARGS`` in this process: exit code, stdout, stderr."""
    from ricordo.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "argv", ["ricordo", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------ dependencies


def test_base_dependencies_leave_lightning_and_unused_packages_to_extras() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(d) for d in project["dependencies"]}
    extras = {k: {_name(d) for d in v} for k, v in project["optional-dependencies"].items()}
    assert not base & {"lightning", "torchmetrics", "transformers", "peft", "ray", "datasets"}
    assert extras["fabric"] == {"lightning"}
    # Pretrained backbones (--backbone) and the LoRA methods: the nlp extra brings them.
    assert {"transformers", "peft"} <= extras["nlp"]
    # CI installs ".[dev]": it must bring every optional package the tests exercise.
    assert {"lightning", "pyarrow", "pillow", "datasets", "ray"} <= extras["dev"]


def _name(requirement: str) -> str:
    for stop in "<>=![; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def _without_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import lightning`` fail as it does when the extra is not installed."""
    for name in list(sys.modules):
        if name == "lightning" or name.startswith("lightning."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.fabric", None)


def test_float32_updates_need_no_lightning_and_mixed_precision_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, digits_scenario: Scenario
) -> None:
    _without_lightning(monkeypatch)
    chunk = digits_scenario.train[0]
    Updater(method="er", accelerator="cpu", **FAST).update(chunk)  # the plain loop
    asked = [
        ("--precision bf16-mixed", {"precision": "bf16-mixed"}),
        ("--backend fabric", {"backend": "fabric"}),
    ]
    for flag, options in asked:
        updater = Updater(method="er", accelerator="cpu", **options, **FAST)
        with pytest.raises(ConfigError, match=r"needs Lightning Fabric.*ricordo\[fabric\]") as e:
            updater.update(chunk)
        assert str(e.value).startswith(f"{flag} needs Lightning Fabric")
        assert updater.history == []  # nothing was trained or recorded


def test_cli_mixed_precision_without_lightning_is_one_line_and_keeps_the_state(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    digits_scenario: Scenario,
) -> None:
    data = tmp_path / "chunk.npz"
    np.savez(data, x=digits_scenario.train[1].x.numpy(), y=digits_scenario.train[1].y.numpy())
    v0 = tmp_path / "states" / "v0"
    updater = Updater(method="er", accelerator="cpu", **FAST)
    updater.update(digits_scenario.train[0])
    updater.save(str(v0))
    before = digest(tmp_path / "states")
    _without_lightning(monkeypatch)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "update",
        "--data",
        data,
        "--state",
        v0,
        "--next-state",
        tmp_path / "states" / "v1",
        "--precision",
        "bf16-mixed",
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("ricordo: error: "), err
    assert "--precision bf16-mixed needs Lightning Fabric" in lines[0] and FABRIC_FIX in lines[0]
    assert digest(tmp_path / "states") == before  # no v1, v0 untouched
    assert Updater.load(str(v0)).history  # and still loadable


# ---------------------------------------------------------------------------------------- CSV

CSV_CASES = {
    "numbers": "a,b,label\n1,2.5,0\n3,,1\n-4e-3,7,2\n",
    "bom-semicolon-spaces": "\ufeff a ; b ;y\n 1 ; x ;0\n2;y ;1\n\n",
    "words-dates-times-stay-text": "a,b,c,y\ntrue,2020-01-01,2020-01-01 10:00,1\n"
    "false,2021-02-03,2021-01-01 11:00,0\n",
    "nan-inf-and-NA": "a,b,c\nnan,NA,inf\n1,2,-inf\n",
    "header-only": "a,b\n",
    "empty-column": "a,b\n,1\n,2\n",
    "quoted-delimiter-and-newline": 'a,b\n"1,5",2\n"x\ny",3\n',
    "tabs": "a\tb\n1\t2\n",
    "beyond-int64": "a,b\n12345678901234567890,1\n5,2\n",
    "crlf-and-blank-lines": "a,b\r\n1,2\r\n\r\n3,4\r\n",
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_pyarrow_and_builtin_csv_readers_agree(case: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.csv"
    path.write_text(CSV_CASES[case], encoding="utf-8", newline="")
    fast = loaders._read_csv_arrow(path)
    slow = loaders._read_csv_builtin(path, "t.csv")
    assert fast is not None, "pyarrow should read this file"
    assert list(fast) == list(slow)  # the same column names, in order
    for name in slow:
        assert fast[name].dtype == slow[name].dtype, name
        assert fast[name].flags.writeable
        np.testing.assert_array_equal(fast[name], slow[name])


def test_csv_uses_pyarrow_when_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,0\n3,4,1\n")

    def refuse(*_: object) -> None:
        raise AssertionError("the built-in reader was used although pyarrow is installed")

    monkeypatch.setattr(loaders, "_read_csv_builtin", refuse)
    data = loaders.load_data(str(path), target="y")
    assert data.x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and data.y.tolist() == [0, 1]


def test_csv_without_pyarrow_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,0\n3,,1\n")
    with_arrow = loaders.load_data(str(path), target="y")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert loaders._read_csv_arrow(path) is None
    without = loaders.load_data(str(path), target="y")
    np.testing.assert_array_equal(without.x.numpy(), with_arrow.x.numpy())
    assert without.y.tolist() == with_arrow.y.tolist() == [0, 1]
    assert without.feature_names == with_arrow.feature_names == ("a", "b")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a,b,y\n1,2,0\n3,4\n", "data row 2 has 2 fields but the header has 3"),
        ("a, a ,y\n1,2,0\n", "duplicate column names: a; rename them"),
        ("", "is empty; a CSV needs a header row"),
    ],
)
def test_malformed_csv_keeps_its_one_line_error_with_pyarrow(
    text: str, needle: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        loaders.load_data(str(path), target="y")


# ---------------------------------------------------------------------------- method notes


@pytest.mark.parametrize("name", METHODS.names())
def test_every_params_field_carries_its_doc_as_metadata(name: str) -> None:
    import dataclasses

    params = METHODS.get(name).Params
    missing = [f.name for f in dataclasses.fields(params) if not f.metadata.get("doc")]
    assert not missing, f'{name}: give {missing} field(metadata={{"doc": ...}})'


def test_describe_does_not_read_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_source(*_: object) -> str:
        raise OSError("no source (a frozen app)")

    monkeypatch.setattr(inspect, "getsource", no_source)
    notes = {p.name: p.note for p in describe("der++").params}
    assert notes["beta"] == "replay cross-entropy weight; Mammoth best, seq-MNIST, buffer 500"
    assert notes["new_columns"].startswith("Growing heads only (num_classes unset)")


# `ricordo methods NAME` printed these before the notes moved to metadata (captured at 100
# columns); they must not change.
METHODS_OUTPUT = {
    "er": """\
er: Mix each new batch with a batch replayed from a reservoir memory.
memory: --memory-size
defaults from: Mammoth's best arguments, seq-MNIST, buffer 500 (replayed batch = batch size)

parameters (--param k=v):
  memory_batch_size  int | None = none
                     Rows drawn from the memory per step; None = --batch-size (Mammoth best, \
seq-MNIST, buffer 500: minibatch_size = batch_size = 10).
""",
    "der++": """\
parameters (--param k=v):
  alpha              float = 1.0
                     logit-MSE weight; Mammoth best for DER++, seq-MNIST, buffer 500
  memory_batch_size  int | None = none
                     Rows per replayed batch; None = --batch-size (Mammoth's seq-MNIST best: 128 \
for DER, 10 for DER++, with batches of 10).
  new_columns        str = clip
                     Growing heads only (num_classes unset): targets of stored rows for output \
columns added later: "clip" = the column's logit at the start of the update, at most the row's \
lowest stored logit; "current" = that logit as is. A fixed head stores every column from the start.
  beta               float = 0.5
                     replay cross-entropy weight; Mammoth best, seq-MNIST, buffer 500
""",
    "super-er": """\
  stable_decay        float = 0.999
                      alpha_s
""",
}


@pytest.mark.parametrize("name", sorted(METHODS_OUTPUT))
def test_methods_output_is_unchanged(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "methods", name)
    assert code == 0, err
    assert METHODS_OUTPUT[name] in out
