"""History, diff, aliases and rollback (issue 13): ``ricordo.lineage`` and ``ricordo.state.alias``.

Aliases are pointer files beside the states; publishing and rolling back must leave every state
byte-identical, never replace a file Ricordo did not write, and refuse a target replaced since.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ricordo import Updater
from ricordo.data import ArrayDataset, load_builtin, make_scenario
from ricordo.errors import StateError, StateNotFoundError
from ricordo.lineage import compare_on_data, diff_states, state_history
from ricordo.state import publish, read_alias, resolve_alias, rollback

FAST = {"epochs": 3, "progress": False, "seed": 0}


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (states and pointers alike)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with v0 and v1 of one lineage (finetune, held-out rows) and a test file."""
    root = tmp_path_factory.mktemp("store")
    train, test = load_builtin("digits")
    chunks = make_scenario("iid", train, test, updates=2, seed=0).train
    updater = Updater(method="finetune", holdout=0.1, **FAST)
    updater.update(chunks[0])
    updater.save(str(root / "v0"))
    updater = Updater.load(str(root / "v0"))
    updater.update(chunks[1], gate=True, lr=0.1)
    updater.save(str(root / "v1"))
    import numpy as np

    np.savez(root.parent / "test.npz", x=test.x.numpy(), y=test.y.numpy())
    return root


@pytest.fixture
def fresh(store: Path, tmp_path: Path) -> Path:
    """A copy of the store this test may publish in (states are read-only in ``store``)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(store, root)
    return root


def predictions(url: str) -> torch.Tensor:
    train, test = load_builtin("digits")
    return Updater.load(url).predict(test.x)


# -- history and diff ----------------------------------------------------------------------------


def test_history_lists_every_update(store: Path) -> None:
    records = state_history(str(store / "v1"))
    assert [r["update"] for r in records] == [0, 1]
    assert records[1]["config"]["lr"] == 0.1 and records[0]["config"]["lr"] == 0.05
    assert records[1]["data"]["held_out"] > 0 and "fingerprint" in records[1]["data"]
    assert records[1]["gate"]["passed"] is True
    assert 0 < records[1]["holdout"]["accuracy"] <= 1
    assert records == Updater.load(str(store / "v1")).history


def test_diff_names_what_changed(store: Path) -> None:
    diff = diff_states(str(store / "v0"), str(store / "v1"))
    assert diff["relation"] == "B descends from A (+1 update(s))"
    assert diff["updates"] == [1, 2]
    assert diff["config"]["lr"] == [0.05, 0.1]
    assert diff["method"] == {} and diff["params"] == {}
    assert diff["files"]["model.safetensors"] == "differ"
    assert "method.json" not in diff["files"]  # finetune's state does not change
    assert diff_states(str(store / "v1"), str(store / "v0"))["relation"] == (
        "A descends from B (+1 update(s))"
    )
    assert diff_states(str(store / "v1"), str(store / "v1"))["files"] == {}


def test_diff_on_data_scores_both_and_counts_flips(store: Path) -> None:
    test = store.parent / "test.npz"
    result = compare_on_data(str(store / "v0"), str(store / "v1"), str(test))
    _, rows = load_builtin("digits")
    old, new = predictions(str(store / "v0")), predictions(str(store / "v1"))
    assert result["samples"] == len(rows)
    assert result["accuracy"] == [
        pytest.approx(float((old == rows.y).double().mean())),
        pytest.approx(float((new == rows.y).double().mean())),
    ]
    expected = float(((old == rows.y) & (new != rows.y)).double().mean())
    assert result["negative_flip_rate"] == pytest.approx(expected)


# -- aliases -------------------------------------------------------------------------------------


def test_publish_and_rollback_move_only_the_pointer(fresh: Path) -> None:
    states = {k: v for k, v in digest(fresh).items() if not k.startswith("latest")}
    latest = str(fresh / "latest")
    publish(str(fresh / "v0"), "latest")
    assert resolve_alias(latest) == str(fresh / "v0")
    publish(str(fresh / "v1"), "latest")
    assert torch.equal(predictions(latest), predictions(str(fresh / "v1")))
    assert Updater.load(latest).source_url == str(fresh / "v1")  # a new state's parent

    back = rollback(latest)
    assert back.target == "v0" and back.previous == ()
    assert torch.equal(predictions(latest), predictions(str(fresh / "v0")))
    with pytest.raises(StateError, match="has no earlier target to roll back to"):
        rollback(latest)
    rollback(latest, to=str(fresh / "v1"))
    assert read_alias(latest).target == "v1"  # type: ignore[union-attr]
    assert rollback(latest).target == "v0"  # --to went on the stack: undone
    # No state was copied, changed or removed; the store holds one new file, the pointer.
    after = digest(fresh)
    assert {k: v for k, v in after.items() if k != "latest"} == states
    assert sorted(os.listdir(fresh)) == ["latest", "v0", "v1"]
    pointer = json.loads((fresh / "latest").read_text())
    assert pointer["format"] == "ricordo-alias" and pointer["target"] == "v0"
    assert [e["action"] for e in pointer["log"]] == ["publish"] * 2 + ["rollback"] * 3


@pytest.mark.parametrize("kind", ["file", "folder", "link"])
def test_publish_refuses_to_replace_what_ricordo_did_not_write(fresh: Path, kind: str) -> None:
    target = fresh / "latest"
    if kind == "file":
        target.write_text("my notes\n")
    elif kind == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine\n")
    else:
        target.symlink_to(fresh / "v0")
    before = digest(fresh)
    with pytest.raises(StateError) as error:
        publish(str(fresh / "v1"), "latest")
    assert str(target) in str(error.value) and "choose another alias name" in str(error.value)
    assert digest(fresh) == before
    assert os.path.islink(target) == (kind == "link")


def test_publish_refuses_a_state_as_alias_name_and_other_folders(fresh: Path) -> None:
    with pytest.raises(StateError, match="is a folder"):
        publish(str(fresh / "v1"), "v0")
    with pytest.raises(StateError, match="is not a name"):
        publish(str(fresh / "v1"), "a/b")
    other = fresh.parent / "elsewhere"
    other.mkdir()
    with pytest.raises(StateError, match="not in the alias's folder"):
        from ricordo.state.alias import _verified_state

        _verified_state(str(fresh / "v1"), str(other / "latest"))


def test_alias_to_a_replaced_state_is_refused(fresh: Path) -> None:
    publish(str(fresh / "v1"), "latest")
    updater = Updater.load(str(fresh / "v0"))
    updater.save(str(fresh / "v1"), overwrite=True)  # v1 is now another state
    with pytest.raises(StateError, match="was replaced after it was published"):
        Updater.load(str(fresh / "latest"))


def test_aliases_on_an_object_store() -> None:
    # fsspec's memory:// stands for s3:// and friends: the pointer is one object, no rename.
    import fsspec

    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    updater = Updater(method="finetune", epochs=1, progress=False)
    root = "memory://alias-test"
    for name in ("v0", "v1"):
        updater.update(x, y)
        updater.save(f"{root}/{name}")
    fs = fsspec.filesystem("memory")
    before = {p: fs.cat_file(p) for p in fs.find("/alias-test")}
    publish(f"{root}/v0", "latest")
    publish(f"{root}/v1", "latest")
    assert Updater.load(f"{root}/latest").updates == 2
    assert rollback(f"{root}/latest").target == "v0"
    assert Updater.load(f"{root}/latest").source_url == f"{root}/v0"
    after = {p: fs.cat_file(p) for p in fs.find("/alias-test") if not p.endswith("/latest")}
    assert after == before
    fs.rm("/alias-test", recursive=True)


def test_rollback_of_a_missing_alias(tmp_path: Path) -> None:
    with pytest.raises(StateNotFoundError, match="no alias at"):
        rollback(str(tmp_path / "nowhere" / "latest"))


def test_update_from_an_alias_records_the_state_as_parent(fresh: Path) -> None:
    publish(str(fresh / "v1"), "latest")
    updater = Updater.load(str(fresh / "latest"))
    chunk = ArrayDataset(updater.holdout.x[:20], updater.holdout.y[:20])
    updater.update(chunk)
    manifest = updater.save(str(fresh / "v2"))
    assert manifest["parent"] == str(fresh / "v1")


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable:
    from ricordo.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["ricordo", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_history_and_diff(store: Path, cli: Callable) -> None:
    code, out, err = cli("history", store / "v1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "finished", "method", "rows"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert "passed (drop" in lines[2] and "finetune" in lines[2]
    code, out, _ = cli("history", store / "v1", "--json")
    assert json.loads(out) == state_history(str(store / "v1"))

    code, out, err = cli("diff", store / "v0", store / "v1", "--data", store.parent / "test.npz")
    assert code == 0, err
    assert "history      B descends from A (+1 update(s)); updates 1 -> 2" in out
    assert "config       lr: 0.05 -> 0.1" in out
    assert "negative flips" in out.splitlines()[-1]


def test_cli_publish_rollback_info_list(fresh: Path, cli: Callable) -> None:
    assert cli("publish", fresh / "v0", "--alias", "latest")[1].strip() == (
        f"{fresh / 'latest'} -> v0 (was -)"
    )
    assert cli("publish", fresh / "v1", "--alias", "latest")[0] == 0
    code, out, _ = cli("info", fresh / "latest")
    assert code == 0 and "alias        latest -> v1" in out and "held out" in out
    code, out, _ = cli("list", fresh)
    assert out.splitlines()[-1].split() == ["latest", "->", "v1", "(alias)"]
    code, out, _ = cli("rollback", fresh / "latest")
    assert code == 0 and out.strip() == f"{fresh / 'latest'} -> v0 (was v1)"
    (fresh / "notes").write_text("mine\n")
    code, _, err = cli("publish", fresh / "v1", "--alias", "notes")
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"ricordo: error: {fresh / 'notes'} exists and is not an alias file")
