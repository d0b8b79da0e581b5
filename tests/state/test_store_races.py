"""A reader that loses the folder it opened to an overwrite retries instead of reporting damage."""

from __future__ import annotations

import os
from pathlib import Path

from ricordo.state.fs import resolve
from ricordo.state.store import _replaced_since, _Seen


def test_swapped_out_folder_counts_as_replaced_even_before_its_manifest_was_read(
    tmp_path: Path,
) -> None:
    # An overwrite exchanged NAME with the new state and is deleting the old folder the reader
    # opened: its manifest is gone before the reader read it. That is a replacement (retry),
    # not an incomplete state, whether or not the writer still holds its lock.
    current = tmp_path / "live"
    current.mkdir()
    (current / "manifest.json").write_text("{}")
    old = tmp_path / "old"
    old.mkdir()
    st = os.stat(old)
    seen = _Seen(manifest=None, folder=(st.st_dev, st.st_ino))
    assert _replaced_since(resolve(str(current)), seen)


def test_same_folder_without_manifest_and_no_writer_is_not_a_replacement(tmp_path: Path) -> None:
    current = tmp_path / "live"
    current.mkdir()
    (current / "weights.safetensors").write_bytes(b"x")
    st = os.stat(current)
    seen = _Seen(manifest=None, folder=(st.st_dev, st.st_ino))
    assert not _replaced_since(resolve(str(current)), seen)
