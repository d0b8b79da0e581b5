"""Library exceptions: each message is one line that names the offending value and the fix."""

from __future__ import annotations


class RicordoError(Exception):
    """Base class for every error Ricordo raises on purpose (the CLI prints it in one line)."""


class ConfigError(RicordoError, ValueError):
    """An option, method, model or parameter is unknown or out of range."""


class DataError(RicordoError, ValueError):
    """Input data is unusable: empty, wrong shape, non-finite, labels out of range."""


class StateError(RicordoError):
    """A state cannot be read or written."""


class StateNotFoundError(StateError, FileNotFoundError):
    """No state (or no manifest) at the given location."""


class StateCorruptError(StateError):
    """A state file is missing, truncated or fails its checksum."""


class StateVersionError(StateError):
    """The state was written in a format this library version cannot read."""


class StateExistsError(StateError, FileExistsError):
    """The target state already exists and overwrite was not requested."""


class StateLockedError(StateError):
    """Another live job holds the lock on the state being written."""


class ModelCodeError(StateError):
    """A state's model is built by user code that was not passed, or whose sha256 differs from
    the one the state recorded (a state never runs code it names; the user supplies it)."""


class TrainingDivergedError(RicordoError):
    """The loss became NaN or infinite, or diverged (see engine.loop.DivergenceGuard); no state
    was written."""


class UpdateRejectedError(RicordoError):
    """The regression gate refused an update (``ricordo.gate``). ``result`` is its verdict
    (a GateResult) and ``candidate`` the refused Updater, which the caller may save aside for
    inspection; the Updater that ran the update is left exactly as before."""

    def __init__(self, message: str, result: object = None, candidate: object = None) -> None:
        super().__init__(message)
        self.result = result
        self.candidate = candidate
