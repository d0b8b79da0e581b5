"""Turn whatever the user has (files, arrays, tensors, torch datasets) into one ``ArrayDataset``.

Every path ends in the same place: ``x`` float32 with its feature shape kept, ``y`` int64 of shape
(N,). Problems are reported as one-line ``DataError`` messages that name the value and the fix.
``load_data`` does not call ``ArrayDataset.validate``: the caller decides what is acceptable.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ricordo.data.dataset import ArrayDataset, missing_features_error
from ricordo.errors import DataError

SUPPORTED_SUFFIXES = (".npz", ".csv", ".parquet")
_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_LABEL_FIX = "map them to integer class ids 0..K-1 first"
# texts -> token ids (N, L) int64: the backbone's tokenizer (ricordo.models.backbone).
Tokenize = Callable[[list[str]], torch.Tensor]


def load_data(
    source: Any,
    y: Any = None,
    *,
    target: str | None = None,
    name: str | None = None,
    group_column: str | None = None,
    columns: Sequence[str] | None = None,
    tokenize: Tokenize | None = None,
) -> ArrayDataset:
    """Load ``source`` as an ``ArrayDataset`` so every layer above sees one format.

    ``source`` is a path to ``.npz`` (arrays ``x`` and ``y``), ``.csv`` or ``.parquet`` (label
    column ``target``, the other columns are features); an array or tensor of features with labels
    ``y``; a pair ``(x, y)``; a mapping with keys ``"x"`` and ``"y"``; a map-style
    ``torch.utils.data.Dataset`` of ``(x, y)`` items; or an ``ArrayDataset`` (returned as is).
    ``name`` is used in error messages (default: the file name, else ``"data"``).
    A per-sample group (year, domain) for grouped scenarios comes from the CSV/Parquet column
    ``group_column`` (not a feature then), an optional array ``group`` in a ``.npz``, or a
    ``"group"`` key of a mapping; string groups become codes 0..G-1 in sorted order.

    A table's feature columns are recorded (``feature_names``). ``columns`` names the feature
    columns to take, in that order (those of the table a model was trained on): missing ones
    are refused and other columns ignored. Data without column names ignores ``columns``.

    Text: a ``.npz`` with a string array ``text`` in place of ``x``, a mapping with ``"text"``,
    or a list/array of strings with labels ``y``. ``tokenize`` (the backbone's tokenizer) turns
    it into int64 token ids (N, L) kept as such; without one text is refused.
    """
    if isinstance(source, (str, Path)):
        return _load_file(
            Path(source),
            y=y,
            target=target,
            name=name,
            group_column=group_column,
            columns=columns,
            tokenize=tokenize,
        )
    label = name or "data"
    for option, value in (("target", target), ("group_column", group_column)):
        if value is not None:
            raise DataError(
                f"{option}={value!r} names a column and applies only to CSV/Parquet files; "
                f"{label} is a {type(source).__name__}, drop {option}="
            )
    if _is_text(source):
        if y is None:
            raise DataError(f"{label} is a list of texts without labels; pass the labels too")
        return _from_text(source, y, label, tokenize)
    if isinstance(source, ArrayDataset):
        _no_y(y, label, "an ArrayDataset")
        return source if columns is None else source.select_features(columns, name=label)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if y is None:
            raise DataError(
                f"{label} is an array of features without labels; pass the labels too: "
                "load_data(x, y)"
            )
        return _from_arrays(source, y, label)
    if isinstance(source, (tuple, list)):
        _no_y(y, label, "an (x, y) pair")
        if len(source) != 2:
            raise DataError(
                f"{label} is a {type(source).__name__} of {len(source)} items; "
                "pass exactly two: (x, y)"
            )
        return _from_arrays(source[0], source[1], label)
    if isinstance(source, Mapping):
        _no_y(y, label, "a mapping")
        keys = [str(k) for k in source]
        if "text" in source and "x" not in source and "y" in source:
            return _from_text(source["text"], source["y"], label, tokenize, source.get("group"))
        if "x" not in source or "y" not in source:
            raise DataError(
                f"{label} needs keys 'x' and 'y'; found keys: {', '.join(keys) or '(none)'}"
            )
        return _from_arrays(source["x"], source["y"], label, source.get("group"))
    if isinstance(source, torch.utils.data.IterableDataset):
        raise DataError(
            f"{label} is an iterable-style torch Dataset; pass a map-style Dataset "
            "(with __len__ and __getitem__) or arrays"
        )
    if isinstance(source, torch.utils.data.Dataset):
        _no_y(y, label, "a torch Dataset")
        return _from_torch_dataset(source, label)
    raise DataError(
        f"cannot load {label} of type {type(source).__name__}; pass a path "
        f"({', '.join(SUPPORTED_SUFFIXES)}), arrays x and y, an (x, y) pair, a dict with 'x' and "
        "'y', or a map-style torch Dataset"
    )


def _no_y(y: Any, label: str, kind: str) -> None:
    if y is not None:
        raise DataError(f"{label} is {kind} that already carries labels; drop the separate y")


# ----------------------------------------------------------------------------------- files


def _load_file(
    path: Path,
    *,
    y: Any,
    target: str | None,
    name: str | None,
    group_column: str | None = None,
    columns: Sequence[str] | None = None,
    tokenize: Tokenize | None = None,
) -> ArrayDataset:
    label = name or path.name
    prefix = "" if label in (str(path), path.name) else f"{label}: "
    if not path.exists():
        raise DataError(f"{prefix}file {str(path)!r} not found; check the path")
    if path.is_dir():
        raise DataError(f"{prefix}{str(path)!r} is a directory; pass a data file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{label}: unsupported file type {suffix or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if y is not None:
        raise DataError(f"{label} is a file that carries its own labels; drop the separate y")
    if suffix == ".npz":
        for option, value in (("target", target), ("group_column", group_column)):
            if value is not None:
                raise DataError(
                    f"{option}={value!r} applies only to CSV/Parquet; {label} is .npz with "
                    f"arrays 'x', 'y' (and optionally 'group'), drop {option}="
                )
        return _load_npz(path, label, tokenize)
    table = _read_csv(path, label) if suffix == ".csv" else _read_parquet(path, label)
    return _from_columns(table, target, label, group_column, columns)


def _load_npz(path: Path, label: str, tokenize: Tokenize | None = None) -> ArrayDataset:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would try to unpickle anything else
        raise DataError(f"{label} is not a .npz (zip) archive; save it with np.savez(path, x=, y=)")
    check_npz_sizes(path, label)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if "text" in keys and "x" not in keys and "y" in keys:
                text, y = npz["text"], npz["y"]
                group = npz["group"] if "group" in keys else None
                return _from_text(text, y, label, tokenize, group)
            if "x" not in keys or "y" not in keys:
                raise DataError(
                    f"{label} needs arrays 'x' and 'y'; found: {', '.join(keys) or '(none)'}; "
                    "save with np.savez(path, x=features, y=labels)"
                )
            x, y = npz["x"], npz["y"]
            group = npz["group"] if "group" in keys else None
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{label} holds pickled object arrays, which Ricordo never loads; "
                "save plain numeric arrays x and y (texts: text=np.array(texts, dtype=str))"
            ) from None
        raise DataError(
            f"{label} is not a readable .npz file ({e}); re-save it with np.savez"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(
            f"{label} is not a readable .npz file ({e}); re-save it with np.savez"
        ) from None
    return _from_arrays(x, y, label, group)


def check_npz_sizes(path: Path, label: str) -> None:
    """Refuse a ``.npz`` whose arrays declare more bytes than the archive holds, before numpy
    allocates them: numpy trusts an array's header, so a few hundred bytes could claim 95 GiB.

    Each member's declared shape x itemsize is compared with the member's uncompressed size,
    and the total with this machine's memory (a ``.npz`` is read whole into RAM).
    """
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    if member.read(6) != b"\x93NUMPY":
                        continue  # np.load returns other members as bytes, never allocates
                with archive.open(info) as member:
                    declared, offset = _declared_npy_bytes(member, f"{label} ({info.filename})")
                _check_declared(declared, info.file_size - offset, f"{label} ({info.filename})")
                total += declared
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(
            f"{label} is not a readable .npz file ({e}); re-save it with np.savez"
        ) from None
    _check_memory(total, label)


def _check_npy_size(path: Path, label: str) -> None:
    """The ``.npy`` version of :func:`check_npz_sizes`: header against file size and RAM."""
    try:
        with path.open("rb") as f:
            declared, offset = _declared_npy_bytes(f, label)
    except (OSError, EOFError) as e:
        raise DataError(f"{label} is not a readable .npy file ({e})") from None
    _check_declared(declared, path.stat().st_size - offset, label)
    _check_memory(declared, label)


def _declared_npy_bytes(f: Any, label: str) -> tuple[int, int]:
    """(bytes the array's header declares, offset of its data) of an open ``.npy`` stream;
    0 bytes for object arrays, which numpy refuses to load without pickle anyway."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:  # 3.0 (utf-8 field names) has no public reader
            shape, _, dtype = npy_format._read_array_header(f, version)  # noqa: SLF001
    except (ValueError, TypeError, SyntaxError) as e:
        raise DataError(
            f"{label} has an unreadable array header ({e}); the file is corrupt"
        ) from None
    offset = f.tell()
    if dtype.hasobject:
        return 0, offset
    return math.prod(int(d) for d in shape) * dtype.itemsize, offset


def _check_declared(declared: int, held: int, label: str) -> None:
    if declared > max(held, 0):
        raise DataError(
            f"{label} declares {_human(declared)} of array data but holds {_human(max(held, 0))}; "
            "the file is corrupt; save the arrays again"
        )


def _check_memory(declared: int, label: str) -> None:
    """Refuse arrays larger than this machine's physical memory (where the OS says)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    if ram > 0 and declared > ram:
        raise DataError(
            f"{label} holds {_human(declared)} of arrays, more than this machine's "
            f"{_human(ram)} of memory; split it into smaller chunks"
        )


def _human(n: int) -> str:
    """Bytes in a readable unit: 300 bytes, 12.0 KiB, 95.4 GiB."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def _read_csv(path: Path, label: str) -> dict[str, np.ndarray]:
    """Read a CSV with a header row into one numpy array per column (float64, else str).

    Comma-separated by default; a header with no comma but a ``;``, tab or ``|`` uses that instead
    (spreadsheet exports in many locales). Cells are stripped; a column whose cells all parse as
    numbers (empty cells: NaN) is float64, any other is text. With pyarrow installed (the
    ``tables`` extra) its multi-threaded reader does the parsing (a 90 MB table: 13x faster, a
    quarter of the memory, benchmarks/README.md); the result is the same as the built-in
    reader's, which also reports every malformed file (pyarrow's errors are not one-line fixes).
    """
    columns = _read_csv_arrow(path)
    return columns if columns is not None else _read_csv_builtin(path, label)


def _csv_delimiter(first: str) -> str:
    """The delimiter named by the header line: ``,``, else the first of ``;``, tab, ``|`` in it."""
    if "," in first:
        return ","
    return next((d for d in ";\t|" if d in first), ",")


def _text_column(raw: np.ndarray) -> np.ndarray:
    """One column's cells as read (str): stripped, then float64 (empty = NaN) if all parse,
    else the stripped text at its own width (not the widest cell of the whole file)."""
    raw = np.char.strip(raw)
    try:
        return np.where(raw == "", "nan", raw).astype(np.float64)
    except ValueError:
        return np.array(raw.tolist(), dtype=str)


def _read_csv_builtin(path: Path, label: str) -> dict[str, np.ndarray]:
    """The standard library's reader: the reference for what a CSV means, and its errors."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        delimiter = _csv_delimiter(text.split("\n", 1)[0])
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{label} is not a readable UTF-8 CSV file ({e})") from None
    if not rows:
        raise DataError(f"{label} is empty; a CSV needs a header row naming the columns")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{label} has duplicate column names: {', '.join(dupes)}; rename them")
    for i, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise DataError(
                f"{label} data row {i} has {len(row)} fields but the header has {len(header)}; "
                f"fix the row or the delimiter ({delimiter!r} used)"
            )
    body = np.array(rows[1:], dtype=str).reshape(len(rows) - 1, len(header))
    return {col: _text_column(body[:, j]) for j, col in enumerate(header)}


def _read_csv_arrow(path: Path) -> dict[str, np.ndarray] | None:
    """The same columns as :func:`_read_csv_builtin`, parsed by pyarrow; None when pyarrow is
    not installed or the file is anything but a well-formed CSV (the built-in reader then
    reads it again and names the problem)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.types as pat
    except ImportError:
        return None
    try:
        with path.open("rb") as handle:
            first = handle.readline(1 << 20).decode("utf-8-sig")
        parse = pacsv.ParseOptions(delimiter=_csv_delimiter(first), newlines_in_values=True)
        # Only an empty cell is missing (not "NA", "null", ...), and "true"/"false" stay text:
        # what the built-in reader does.
        convert = pacsv.ConvertOptions(null_values=[""], true_values=[], false_values=[])
        table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        header = [name.strip() for name in table.column_names]
        if len(set(header)) != len(header):
            return None
        # Dates, times, timestamps: re-read as the text that was in the file.
        other = [
            name
            for name, kind in zip(table.column_names, table.schema.types, strict=True)
            if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_null(kind))
            and not pat.is_string(kind)
        ]
        if other:
            convert.column_types = {name: pa.string() for name in other}
            table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (UnicodeDecodeError, pa.ArrowException, OSError):
        return None
    columns: dict[str, np.ndarray] = {}
    for name, column in zip(header, table.columns, strict=True):
        if pat.is_string(column.type):
            columns[name] = _text_column(np.array(column.to_pylist(), dtype=str))
        else:  # numbers; nulls (empty cells) become NaN
            values = column.cast(pa.float64()).to_numpy()
            # Arrow's buffers are read-only; the callers get ordinary arrays, as from the builtin.
            columns[name] = values if values.flags.writeable else values.copy()
    return columns


def _read_parquet(path: Path, label: str) -> dict[str, np.ndarray]:
    """Read a Parquet file into one numpy array per column (numeric, else object)."""
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pat
    except ImportError:
        raise DataError("reading Parquet needs pyarrow; pip install 'ricordo[tables]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{label} is not a readable Parquet file ({e})") from None
    columns: dict[str, np.ndarray] = {}
    for field, col in zip(table.schema, table.columns, strict=True):
        t = field.type
        if pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_decimal(t):
            values = col.to_numpy()
            if values.dtype == object:  # decimals, or booleans with nulls
                values = np.array([np.nan if v is None else float(v) for v in values])
            columns[field.name] = values
        elif pat.is_string(t) or pat.is_large_string(t) or pat.is_dictionary(t):
            columns[field.name] = np.array(col.to_pylist(), dtype=object).astype(str)
        else:  # lists, structs, timestamps, binary: kept as objects and refused downstream
            values = np.empty(len(col), dtype=object)
            for i, v in enumerate(col.to_pylist()):
                values[i] = v
            columns[field.name] = values
    return columns


def _from_columns(
    columns: dict[str, np.ndarray],
    target: str | None,
    label: str,
    group_column: str | None = None,
    wanted: Sequence[str] | None = None,
) -> ArrayDataset:
    names = list(columns)
    if target is None:
        raise DataError(
            f"{label} is a table; name its label column with target=COLUMN "
            f"(CLI: --target COLUMN); columns: {', '.join(names)}"
        )
    if target not in columns:
        raise DataError(f"{label} has no column {target!r}; available columns: {', '.join(names)}")
    if group_column is not None and group_column not in columns:
        raise DataError(
            f"{label} has no group column {group_column!r}; available columns: {', '.join(names)}"
        )
    if group_column == target:
        raise DataError(f"{label}: group_column and target are both {target!r}; pick two columns")
    features = [c for c in names if c not in (target, group_column)]
    if wanted is not None:  # by name, in the trained order; other columns are ignored
        missing = [c for c in wanted if c not in features]
        if missing:
            raise missing_features_error(label, missing)
        features = list(wanted)
    if not features:
        raise DataError(f"{label} has only the label column {target!r}; it needs feature columns")
    bad = [c for c in features if columns[c].dtype.kind not in "biuf"]
    if bad:
        raise DataError(
            f"{label} has non-numeric feature columns: {', '.join(bad)}; "
            "encode them as numbers or drop them"
        )
    x = np.stack([columns[c].astype(np.float32) for c in features], axis=1)
    y = _labels(columns[target], f"column {target!r}", label)
    group = None
    if group_column is not None:
        group = _group(columns[group_column], f"column {group_column!r}", len(y))
    return ArrayDataset(torch.from_numpy(x), y, group, tuple(features))


# ---------------------------------------------------------------------------------- arrays


def _is_text(value: Any) -> bool:
    """A list/tuple of strings or a numpy string array (not an (x, y) pair of arrays)."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "US"
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, str) for v in value)
    )


def _from_text(
    texts: Any, y: Any, label: str, tokenize: Tokenize | None, group: Any = None
) -> ArrayDataset:
    """Texts and labels as token ids (N, L) int64, tokenized by the backbone's tokenizer."""
    if tokenize is None:
        raise DataError(
            f"{label} is text (strings, not numbers), which needs a tokenizer: pass "
            "--backbone NAME_OR_PATH, a BERT-like text encoder (Python: backbone=...)"
        )
    arr = _as_numpy(texts, f"the texts of {label}")
    if arr.dtype.kind not in "US" or arr.ndim != 1:
        raise DataError(
            f"the texts of {label} have dtype {arr.dtype} and shape {arr.shape}; pass one "
            "string per sample (np.array(texts, dtype=str))"
        )
    strings = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    yt = _labels(y, label, label)
    if len(strings) != yt.shape[0]:
        raise DataError(
            f"{label} has {len(strings)} texts but {yt.shape[0]} labels; pass exactly one label "
            "per text"
        )
    ids = tokenize(strings).to(torch.int64)
    gt = None if group is None else _group(group, f"the group of {label}", len(yt))
    return ArrayDataset(ids, yt, gt)


def _text_features(texts: Any, label: str, tokenize: Tokenize | None) -> torch.Tensor:
    """Token ids of unlabelled texts (prediction)."""
    return _from_text(texts, np.zeros(len(texts), dtype=np.int64), label, tokenize).x


def _from_arrays(x: Any, y: Any, label: str, group: Any = None) -> ArrayDataset:
    xt = _features(x, label)
    yt = _labels(y, label, label)
    if xt.shape[0] != yt.shape[0]:
        raise DataError(
            f"{label} has {xt.shape[0]} feature rows but {yt.shape[0]} labels; "
            "pass exactly one label per row"
        )
    gt = None if group is None else _group(group, f"the group of {label}", len(yt))
    return ArrayDataset(xt, yt, gt)


def _group(values: Any, where: str, n: int) -> torch.Tensor:
    """Group values as a 1-D tensor: whole numbers int64, other numbers float64, ISO dates or
    times as int64 days (or seconds, for times) since 1970-01-01, so they sort chronologically.

    Other strings are refused: codes made per file would differ between train and test.
    """
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    arr = _as_numpy(arr, where)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{where} has shape {arr.shape}; pass one group value per sample ({n})")
    if arr.dtype.kind in "USOM":
        items = arr.tolist()
        if any(v is None or v == "" or (isinstance(v, float) and np.isnan(v)) for v in items):
            raise DataError(f"{where} has missing values; fill or drop those rows")
        try:
            dates = arr if arr.dtype.kind == "M" else arr.astype(str).astype("datetime64")
        except ValueError:
            raise DataError(
                f"{where} holds strings that are not ISO dates (e.g. {str(items[0])!r}); map "
                "them to numbers first, with the same mapping for train and test"
            ) from None
        coarse = np.datetime_data(dates.dtype)[0] in ("Y", "M", "W", "D")
        arr = dates.astype("datetime64[D]" if coarse else "datetime64[s]").astype(np.int64)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {arr.dtype}; use numbers or strings as groups")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise DataError(f"{where} has missing values (NaN); fill or drop those rows")
        if np.all(arr == np.round(arr)) and np.isfinite(arr).all():
            arr = arr.astype(np.int64)
    return torch.from_numpy(
        np.ascontiguousarray(arr, dtype=np.int64 if arr.dtype.kind in "biu" else np.float64)
    )


def _as_numpy(a: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise DataError(
            f"{what} cannot be read as one array ({e}); pass a rectangular array"
        ) from None


def _features(x: Any, label: str) -> torch.Tensor:
    """Features as a float32 tensor, keeping their shape (and device, for tensors)."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex:
            raise DataError(f"features in {label} are complex ({x.dtype}); pass real numbers")
        out = x.detach().to(torch.float32)
    else:
        arr = _as_numpy(x, f"features in {label}")
        if arr.dtype.kind == "O":
            try:
                arr = arr.astype(np.float32)
            except (ValueError, TypeError):
                raise DataError(
                    f"features in {label} are Python objects that are not numbers; "
                    "pass a numeric array"
                ) from None
        if arr.ndim == 0:
            raise DataError(f"features in {label} are a single number; pass one row per sample")
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"features in {label} have dtype {arr.dtype} (not numbers); "
                "encode them as numbers first"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        out = torch.from_numpy(arr)
    if out.ndim == 0:
        raise DataError(f"features in {label} are a single number; pass one row per sample")
    return out


def _labels(y: Any, where: str, label: str) -> torch.Tensor:
    """Labels as an int64 vector; strings and fractional numbers are refused, not guessed."""
    if isinstance(y, torch.Tensor):
        t = y.detach()
    else:
        arr = _as_numpy(y, f"labels in {where}")
        if arr.dtype.kind in "US" or (
            arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.flat)
        ):
            raise DataError(f"labels in {where} are strings; {_LABEL_FIX}")
        if arr.dtype.kind == "O":
            try:
                arr = arr.astype(np.float64)
            except (ValueError, TypeError):
                raise DataError(f"labels in {where} are not numbers; {_LABEL_FIX}") from None
        if arr.dtype.kind not in "biuf":
            raise DataError(f"labels in {where} have dtype {arr.dtype}; {_LABEL_FIX}")
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 1:
        raise DataError(
            f"labels in {where} have shape {tuple(t.shape)}; pass a 1-D vector of class ids "
            "(one-hot labels: y.argmax(1); column vectors: y.ravel())"
        )
    if t.dtype.is_complex:
        raise DataError(f"labels in {where} are complex numbers; {_LABEL_FIX}")
    if t.dtype.is_floating_point:
        missing = int(torch.isnan(t).sum())
        if missing:
            raise DataError(
                f"labels in {where} are missing (NaN or empty) in {missing} row(s); "
                "drop or fill those rows"
            )
        whole = torch.isfinite(t) & (t == torch.round(t))
        if not bool(whole.all()):
            bad = t[~whole][0].item()
            raise DataError(
                f"labels in {where} are not whole numbers (e.g. {bad}); labels must be "
                "integer class ids 0..K-1 (regression targets are not supported)"
            )
    return t.to(torch.int64)


# --------------------------------------------------------------------------- torch datasets


def _from_torch_dataset(ds: torch.utils.data.Dataset, label: str) -> ArrayDataset:
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) == 2:  # TensorDataset: no per-item loop
        return _from_arrays(tensors[0], tensors[1], label)
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            f"{label} is a torch Dataset without __len__; give it one or pass arrays"
        ) from None
    xs: list[torch.Tensor] = []
    ys: list[Any] = []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, Sequence) or isinstance(item, (str, bytes)) or len(item) != 2:
            raise DataError(
                f"item {i} of {label} is a {type(item).__name__}, not an (x, y) pair; "
                "make __getitem__ return (features, label)"
            )
        xi, yi = item
        if isinstance(xi, torch.Tensor):
            ok = xi.dtype.is_floating_point or xi.dtype in _INT_DTYPES
            kind = str(xi.dtype)
        else:
            xi = _as_numpy(xi, f"features of item {i} of {label}")
            ok, kind = xi.dtype.kind in "biuf", str(xi.dtype)
        if not ok:
            raise DataError(f"features of item {i} of {label} have dtype {kind}; return numbers")
        xi = torch.as_tensor(xi).detach().to(torch.float32)
        if xs and xi.shape != xs[0].shape:
            raise DataError(
                f"item {i} of {label} has feature shape {tuple(xi.shape)} but item 0 has "
                f"{tuple(xs[0].shape)}; all samples need the same shape"
            )
        if isinstance(yi, torch.Tensor):
            if yi.numel() != 1:
                raise DataError(
                    f"item {i} of {label} has a label of shape {tuple(yi.shape)}; "
                    "return one class id per item"
                )
            yi = yi.reshape(()).item()
        ys.append(yi)
        xs.append(xi)
    if not xs:
        return ArrayDataset(torch.empty(0), torch.empty(0, dtype=torch.int64))
    return _from_arrays(torch.stack(xs), np.array(ys), label)


# ------------------------------------------------------------------------- features only


def load_features(
    source: Any,
    *,
    target: str | None = None,
    name: str | None = None,
    columns: Sequence[str] | None = None,
    tokenize: Tokenize | None = None,
) -> torch.Tensor:
    """Features for prediction, where labels are optional: ``.npy``, ``.npz`` (``x``), CSV or
    Parquet (every column except ``target`` when it is present), arrays, tensors or any input
    :func:`load_data` accepts. Texts (a list or array of strings, a ``.npy`` of strings, a
    ``.npz`` with ``text``) become token ids with ``tokenize``.

    ``columns``: the feature columns a model was trained on (``ArrayDataset.feature_names``);
    a table then gives exactly these columns, chosen by name and in this order (missing ones are
    refused, others ignored). Inputs without column names are taken by position.
    """
    if not isinstance(source, (str, Path)):
        if _is_text(source):
            return _text_features(source, name or "inputs", tokenize)
        if isinstance(source, (np.ndarray, torch.Tensor, list)):
            return _features(source, name or "inputs")
        data = load_data(source, name=name, tokenize=tokenize)
        if columns is not None:
            data = data.select_features(columns, name=name or "inputs")
        return data.x
    path = Path(source)
    label = name or path.name
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv", ".parquet") or not path.is_file():
        return load_data(path, target=target, name=name, tokenize=tokenize).x
    if suffix == ".npy":
        _check_npy_size(path, label)
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(
                f"{label} is not a plain numeric .npy file ({e}); save it with np.save(path, x)"
            ) from None
        except (OSError, EOFError) as e:
            raise DataError(f"{label} is not a readable .npy file ({e})") from None
        if _is_text(array):
            return _text_features(array, label, tokenize)
        return _features(array, label)
    if suffix == ".npz":
        check_npz_sizes(path, label)
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "y" not in archive.files and "x" in archive.files:
                    return _features(archive["x"], label)
                if "y" not in archive.files and "text" in archive.files:
                    return _text_features(archive["text"], label, tokenize)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            pass  # load_data below gives the detailed message
        return load_data(path, name=name, tokenize=tokenize).x
    table = _read_csv(path, label) if suffix == ".csv" else _read_parquet(path, label)
    if columns is not None:
        missing = [c for c in columns if c not in table]
        if missing:
            raise missing_features_error(label, missing)
        features = {c: table[c] for c in columns}
    else:
        features = {k: v for k, v in table.items() if k != target}
    bad = [c for c, v in features.items() if v.dtype.kind not in "biuf"]
    if bad:
        raise DataError(
            f"{label} has non-numeric columns: {', '.join(bad)}; drop them, or name the label "
            "column with --target so it is left out"
        )
    if not features:
        raise DataError(f"{label} has no feature columns")
    return torch.from_numpy(np.stack([v.astype(np.float32) for v in features.values()], axis=1))
