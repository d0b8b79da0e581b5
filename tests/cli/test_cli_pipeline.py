"""The production pipeline through the CLI (issue 13): held-out rows, ``update --gate`` and its
exit status, the refused candidate kept aside, and examples/weekly_pipeline.py end to end."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ricordo.cli import GATE_REFUSED
from ricordo.state import read_alias, read_manifest

Cli = Callable[..., Any]
FAST = ("--epochs", "5", "--no-progress", "--method", "finetune")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "weekly_pipeline.py"


@pytest.fixture(scope="module")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits in 3 chunks of one distribution, a harmful chunk (labels moved to the next class)
    and a shifted harmful one (inverted pixels, random labels)."""
    from ricordo.data import export_scenario, load_builtin, make_scenario

    out = tmp_path_factory.mktemp("weeks")
    train, test = load_builtin("digits")
    export_scenario(make_scenario("iid", train, test, updates=3, seed=0), out)
    chunk = np.load(out / "train-2.npz")
    np.savez(out / "harmful.npz", x=chunk["x"], y=(chunk["y"] + 1) % 10)
    labels = np.random.default_rng(0).integers(0, 10, len(chunk["y"]))
    np.savez(out / "shifted-harmful.npz", x=16.0 - chunk["x"], y=labels)
    return out


def test_gate_publishes_a_good_update_and_refuses_a_harmful_one(
    cli: Cli, weeks: Path, tmp_path: Path, digest: Callable[[Path], dict[str, str]]
) -> None:
    v0, v1, v2 = (tmp_path / f"v{k}" for k in range(3))
    first = cli(
        "update", "--data", weeks / "train-0.npz", "--next-state", v0, "--holdout", "0.2", *FAST
    )
    assert first.code == 0, first.describe()
    assert "samples (96 more held out)" in first.out

    good = cli(
        "update", "--data", weeks / "train-1.npz", "--state", v0, "--next-state", v1, "--gate"
    )
    assert good.code == 0, good.describe()
    assert good.out.splitlines()[-1].startswith(
        "gate passed: accuracy on held-out rows of updates 0 (96 rows)"
    )

    before = digest(tmp_path)
    bad = cli(
        "update", "--data", weeks / "harmful.npz", "--state", v1, "--next-state", v2,
        "--gate", "--max-regression", "0.05", "--lr", "0.2",
    )  # fmt: skip
    assert bad.code == GATE_REFUSED == 3, bad.describe()
    assert len(bad.err_lines) == 1, bad.err
    line = bad.err_lines[0]
    assert line.startswith(
        "ricordo: update refused by the gate: accuracy on held-out rows of updates 0,1 (192 rows)"
    )
    assert f"--next-state {v2} was not written" in line
    assert not v2.exists()
    (rejected,) = tmp_path.glob("v2.rejected-*")
    assert f"the candidate is at {rejected} (compare: ricordo diff {v1} {rejected})" in line
    # The previous states are byte-identical; the only new entry is the candidate.
    after = digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("v2.rejected-")} == before
    manifest = read_manifest(str(rejected))
    assert manifest["parent"] == str(v1) and manifest["meta"]["gate"]["passed"] is False
    listing = cli("list", tmp_path)
    assert listing.out.splitlines()[-1].endswith("REFUSED by the gate")


def test_refused_candidate_goes_where_asked(cli: Cli, weeks: Path, tmp_path: Path) -> None:
    v0 = tmp_path / "v0"
    assert (
        cli(
            "update", "--data", weeks / "train-0.npz", "--next-state", v0, "--holdout", "0.2", *FAST
        ).code
        == 0
    )
    aside = tmp_path / "inspect" / "candidate"
    bad = cli(
        "update", "--data", weeks / "harmful.npz", "--state", v0, "--next-state", tmp_path / "v1",
        "--gate", "--rejected-state", aside, "--lr", "0.2",
    )  # fmt: skip
    assert bad.code == GATE_REFUSED, bad.describe()
    assert read_manifest(str(aside))["meta"]["updates"] == 2
    same = cli(
        "update", "--data", weeks / "train-1.npz", "--state", v0, "--next-state", tmp_path / "v1",
        "--gate", "--rejected-state", tmp_path / "v1",
    )  # fmt: skip
    assert same.code == 1 and "--rejected-state" in same.err and "is --next-state" in same.err


def test_gate_needs_held_out_rows_or_data(cli: Cli, weeks: Path, tmp_path: Path) -> None:
    v0, v1 = tmp_path / "v0", tmp_path / "v1"
    assert cli("update", "--data", weeks / "train-0.npz", "--next-state", v0, *FAST).code == 0
    refused = cli(
        "update", "--data", weeks / "train-1.npz", "--state", v0, "--next-state", v1, "--gate"
    )
    assert refused.code == 1 and refused.err_lines[0].startswith(
        "ricordo: error: the gate has nothing to compare on"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0"]  # nothing trained or written
    given = cli(
        "update", "--data", weeks / "train-1.npz", "--state", v0, "--next-state", v1,
        "--gate", "--gate-data", weeks / "test-all.npz",
    )  # fmt: skip
    assert given.code == 0, given.describe()
    assert "gate passed: accuracy on the gate data" in given.out
    loose = cli(
        "update",
        "--data",
        weeks / "train-1.npz",
        "--next-state",
        tmp_path / "x",
        "--max-regression",
        "0.1",
    )
    assert loose.code == 1
    assert loose.err_lines == [
        "ricordo: error: --max-regression applies to a gated update; add --gate"
    ]


def test_weekly_pipeline_example(
    weeks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("weekly_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "weekly_pipeline", example)  # its dataclass looks it up
    spec.loader.exec_module(example)
    store = tmp_path / "models"

    def week(*args: object) -> tuple[int, str]:
        code = example.main(["--store", str(store), "--epochs", "5", *map(str, args)])
        return code, capsys.readouterr().out

    assert week("--data", weeks / "train-0.npz") == (0, f"published: {store / 'v0'}\n")
    code, out = week("--data", weeks / "train-1.npz")  # same distribution: nothing to do
    assert code == 0 and out.startswith("no shift detected") and "skipped" in out
    code, out = week("--data", weeks / "train-1.npz", "--always")
    assert code == 0 and "gate passed" in out and out.endswith(f"published: {store / 'v1'}\n")
    code, out = week("--data", weeks / "shifted-harmful.npz")
    assert code == 3 and out.startswith("shift detected") and "gate refused" in out
    alias = read_alias(str(store / "latest"))
    assert alias is not None and alias.target == "v1"
    assert sorted(p.name for p in store.iterdir())[:3] == ["latest", "v0", "v1"]
    assert len(list(store.glob("v2.rejected-*"))) == 1
