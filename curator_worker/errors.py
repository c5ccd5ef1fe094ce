"""Every error a curator-worker user can meet, as one hierarchy.

Each class names a situation; each message says what to do about it.
"""

from __future__ import annotations


class CuratorError(Exception):
    """Base class of every error raised on purpose by curator-worker."""


class PipelineError(CuratorError):
    """A pipeline is built or used wrongly (no sink, bad index, bad component)."""


class SpecError(CuratorError):
    """A pipeline spec cannot be loaded: bad YAML/JSON, unknown module or class, bad params.

    Raised before anything is enqueued. The message is one line that names the file,
    the component and the fix.
    """


class PartitionConflictError(PipelineError, ValueError):
    """The source's and the sink's partitions cannot both be satisfied."""


class IndexSelectionError(CuratorError, ValueError):
    """An index list such as ``0-99,200`` is malformed, out of range or has duplicates."""


class ConfigurationError(CuratorError):
    """A setting (environment variable or flag) is missing or invalid."""


class BrokerUnavailableError(CuratorError):
    """The broker or job store cannot be reached. The message has credentials redacted."""


class JobNotFoundError(CuratorError):
    """No job with this id exists in the job store (never submitted, or expired)."""


class JobWaitTimeout(CuratorError):
    """Waiting for a job gave up after its timeout; the job itself was not stopped.

    Attributes
    ----------
    job_id : str
        The job waited for.
    timeout : float
        Seconds waited.
    processed, total : int
        Its indices processed so far, and in all.
    """

    def __init__(self, job_id: str, timeout: float, processed: int, total: int,
                 message: str | None = None) -> None:
        self.job_id, self.timeout, self.processed, self.total = job_id, timeout, processed, total
        super().__init__(message or (
            f"Timed out after {timeout:.0f}s waiting for job {job_id} "
            f"({processed}/{total} indices). It keeps running; "
            f"`curator-jobs wait {job_id}` picks it up again."
        ))


class JobFailedError(CuratorError):
    """A job ended with failed indices or a systemic error.

    Attributes
    ----------
    job_id : str
        The job's id.
    state : str
        The job's final state (``partial`` or ``failed``).
    failures : dict[int, str]
        Failed index to a one-line error description.

    ``in_job_store=False`` (local backends) leaves out the hint to ``curator-jobs status``.
    """

    def __init__(
        self, job_id: str, state: str, failures: dict[int, str], detail: str = "",
        in_job_store: bool = True,
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.failures = failures
        shown = ", ".join(f"{i}: {msg}" for i, msg in list(failures.items())[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        text = f"job {job_id} ended {state}"
        if failures:
            text += f"; {len(failures)} failed indices: {shown}{more}"
        if detail:
            text += f"; {detail}"
        # local backends' runs are not in the job store: nothing for curator-jobs to show
        hint = f" Inspect with `curator-jobs status {job_id}`." if in_job_store else ""
        super().__init__(text + "." + hint)


class JobControlConflictError(CuratorError):
    """Another job-control command (retry, resume, cancel) of the same job is in progress."""
