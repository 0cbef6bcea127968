"""Our exception types. Every message names the thing that is wrong (file, tensor, field)."""

from __future__ import annotations


class SoceError(Exception):
    """Base of every error SoCE raises on purpose; the CLI prints it and exits with code 2."""


class CheckpointError(SoceError):
    """A checkpoint folder or file cannot be used."""


class CheckpointNotFoundError(CheckpointError):
    """The path does not exist or holds no weights."""


class CorruptCheckpointError(CheckpointError):
    """A weights file is truncated, has a malformed header or impossible offsets."""


class PickleRefusedError(CheckpointError):
    """Only pickle weights exist and the caller did not opt in to loading them."""


class NonFiniteTensorError(CheckpointError):
    """A tensor holds NaN or Inf values."""


class IncompatibleCheckpointsError(SoceError):
    """Candidates cannot be merged: names, shapes, dtypes, architecture or tokenizer differ."""


class RecipeError(SoceError):
    """A merge recipe (ours or mergekit's) is invalid; the message names the field."""


class UnknownMergeMethodError(RecipeError):
    """No merge method is registered under that name."""


class OutputExistsError(SoceError):
    """The output folder exists and overwriting was not asked for."""


class SuiteError(SoceError):
    """A benchmark suite is invalid: unknown task, empty category, duplicate name, missing metric."""


class EvaluationError(SoceError):
    """A task failed to load or run, a metric was not produced, or a model failed to load."""


class DecodeError(EvaluationError):
    """A model's answer holds no function calls in the format the benchmark asks for (BFCL)."""


class ScoreFileError(SoceError):
    """An imported score file (CSV or JSON) is malformed; the message names the row and field."""


class DatabaseError(SoceError):
    """The app database cannot be reached, migrated or written; the message names the database."""


class SearchError(SoceError):
    """A weight search cannot run as configured: sampler, space, experts or stored study."""


class RunRecipeError(SoceError):
    """A `soce run` recipe is invalid; the message names the file and the field."""


class InterpolationError(SoceError):
    """An interpolation curve cannot be computed as asked: its points, split, checkpoints or evaluator."""


class JobError(SoceError):
    """A job cannot run as submitted; its message is stored on the job."""


class TrialFailed(JobError):
    """A trial's evaluation raised: the trial is failed in the study, and the job with it."""


class JobCancelled(Exception):
    """The job was cancelled (or deleted) while a step ran: the step stops and leaves the state as it is."""


class ApiKeyError(SoceError):
    """An API key cannot be created, found or revoked; the message says which."""


class ScheduleError(SoceError):
    """A schedule is invalid: its cron expression, recipe or candidates; the message names the field,
    and `field` (when set) is its place in a request body, e.g. ("candidate_source", "glob")."""

    def __init__(self, message: str, *, field: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.field = field


class TransientError(SoceError):
    """An error a retry can cure (a connection lost, a server restarting, a serialization failure):
    the task that met it is run again, with backoff, instead of failing its job."""


# SQLSTATE classes and codes that a retry can cure: connection exceptions, serialization failures and
# deadlocks, and a server shutting down, restarting or not yet accepting connections
_TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P01", "57P02", "57P03")
_TRANSIENT_TYPES = {
    ("sqlalchemy.exc", "OperationalError"),
    ("sqlalchemy.exc", "InterfaceError"),
    ("sqlalchemy.exc", "DisconnectionError"),
    ("psycopg", "OperationalError"),
    ("psycopg", "InterfaceError"),
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"),
    ("redis.exceptions", "BusyLoadingError"),
    ("kombu.exceptions", "OperationalError"),
}


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is one a retry can cure.

    Database errors count by their SQLSTATE when they carry one (a constraint violation does not; a
    terminated connection or a serialization failure does), else by their type; broker connection
    errors count by type. Types are matched by module and class name, so no driver is imported here.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, TransientError):
            return True
        sqlstate = getattr(error, "sqlstate", None) or getattr(getattr(error, "orig", None), "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            if sqlstate.startswith(_TRANSIENT_SQLSTATES):
                return True
        elif isinstance(error, ConnectionError) or any(_transient_type(c) for c in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


def _transient_type(cls: type) -> bool:
    module = cls.__module__
    return (module, cls.__name__) in _TRANSIENT_TYPES or (
        module.split(".")[0],
        cls.__name__,
    ) in _TRANSIENT_TYPES
