"""Where a tuning job's trials keep their checkpoints and results (``--trials-dir``/``--storage``).

Ray Tune writes every trial's results and checkpoints under ``RunConfig(storage_path=...)``; on
a cluster the trials run on other nodes, so that place must be storage every node reaches. A
local folder (or ``file://`` URL) is used as it is: on a cluster it must be mounted at the same
path on every node (NFS and the like). Any other URL is opened with fsspec (``s3://``, ``gs://``,
``az://``, ...) and handed to Ray as a pyarrow filesystem, so every fsspec backend works, not
only the few pyarrow knows by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ricordo.errors import ConfigError


@dataclass(frozen=True)
class TrialStorage:
    """Ray Tune's ``storage_path`` and ``storage_filesystem`` for one tuning job."""

    path: str  # a local absolute path, or a path on ``filesystem``
    filesystem: Any = None  # a pyarrow FileSystem for a URL; None for a local folder
    url: str | None = None  # the URL given (None for a local folder)

    @property
    def local(self) -> bool:
        """True for a folder of this machine's file system (shared only if mounted so)."""
        return self.filesystem is None


def trial_storage(where: str) -> TrialStorage:
    """Resolve ``where`` (a folder or any fsspec URL) to where Ray Tune writes the trials."""
    if "://" not in where:
        return TrialStorage(os.path.abspath(where))
    if where.startswith("file://"):
        return TrialStorage(os.path.abspath(where[len("file://") :]))
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem
    except ImportError:  # pragma: no cover - both come with Ray Tune
        raise ConfigError(
            f"--storage {where} needs fsspec and pyarrow; pip install fsspec pyarrow"
        ) from None
    try:
        filesystem, path = fsspec.core.url_to_fs(where)
    except (ImportError, ValueError) as error:  # an unknown protocol or its package missing
        raise ConfigError(
            f"--storage {where} cannot be opened ({error}); give a folder or an fsspec URL "
            "whose package is installed (e.g. s3fs for s3://)"
        ) from None
    return TrialStorage(path, PyFileSystem(FSSpecHandler(filesystem)), where)


def other_machines(ray: Any) -> list[str]:
    """The addresses of the connected Ray cluster's live nodes that are not this machine's.

    A node on another machine cannot see this machine's local folders, unless they are mounted
    there too, which cannot be told from here.
    """
    here = ray.util.get_node_ip_address()
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    return sorted(a for a in addresses if a != here)
