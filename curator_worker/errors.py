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


class IndexFailedError(PipelineError):
    """An index failed on the ``sequential`` backend (which stops at the first failure).

    The message names the index; the original exception is chained (``__cause__``). The
    instance raised is also an instance of the original exception's type when that type
    allows it (``except ValueError`` keeps working, as in physicsnemo-curator).

    Attributes
    ----------
    index : int
        The index that failed.
    """

    index: int = -1


def index_failed(exc: Exception, index: int, backend: str = "sequential") -> Exception:
    """An :class:`IndexFailedError` for ``exc`` raised by ``index``, of ``exc``'s type too.

    When no such class can be made (an exception type with its own constructor or memory
    layout), ``exc`` itself is returned with a note naming the index.
    """
    message = f"index {index} failed: {exc}"
    original = type(exc)
    try:
        combined = type(original.__name__, (IndexFailedError, original),
                        {"__module__": original.__module__})
        new = combined(message)
        if str(new) != message:
            raise TypeError("the original type formats its message itself")
    except Exception:  # noqa: BLE001 - fall back to a note on the original
        exc.add_note(f"(raised by index {index} on the {backend} backend)")
        return exc
    new.index = index
    return new


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

    Failures are listed grouped by error (the same exception on 2,000 indices is one line
    with its index ranges). ``in_job_store=False`` (local backends) leaves out the hint to
    ``curator-jobs failures``; ``hint`` replaces it (the embedded cluster says why the job
    cannot be inspected afterwards).
    """

    def __init__(
        self, job_id: str, state: str, failures: dict[int, str], detail: str = "",
        in_job_store: bool = True, hint: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.failures = failures
        text = f"job {job_id} ended {state}"
        if failures:
            text += f"; {describe_failures(failures)}"
        if detail:
            text += f"; {detail}"
        if hint is None:
            # local backends' runs are not in the job store: nothing for curator-jobs to show
            hint = (f"Inspect with `curator-jobs failures {job_id}` (or `curator-jobs status "
                    f"{job_id}`)." if in_job_store else "")
        super().__init__(text + "." + (f" {hint}" if hint else ""))


def describe_failures(failures: dict[int, str], groups_shown: int = 3) -> str:
    """One line: the failed indices grouped by error, with their index ranges.

    Examples
    --------
    >>> describe_failures({1: "ValueError: bad 1", 2: "ValueError: bad 2", 5: "KeyError: 'x'"})
    "3 failed indices in 2 groups: ValueError: bad <n> (indices 1-2); KeyError: 'x' (index 5)"
    """
    from curator_worker.failures import group_failures, shorten_ranges

    records = {}
    for index, line in failures.items():
        kind, _, message = str(line).partition(": ")
        records[index] = {"type": kind, "message": message}
    groups = group_failures(records)
    parts = []
    for group in groups[:groups_shown]:
        first = group.message.splitlines()[0] if group.message else ""
        where = (f"index {group.ranges}" if group.count == 1
                 else f"indices {shorten_ranges(group.ranges, 80)}")
        parts.append(f"{group.type}: {first} ({where})")
    if len(groups) > groups_shown:
        rest = sum(g.count for g in groups[groups_shown:])
        parts.append(f"{len(groups) - groups_shown} more groups ({rest} indices)")
    count = len(failures)
    noun = "index" if count == 1 else "indices"
    head = f"{count} failed {noun}" + (f" in {len(groups)} groups" if len(groups) > 1 else "")
    return f"{head}: {'; '.join(parts)}"


class JobControlConflictError(CuratorError):
    """Another job-control command (retry, resume, cancel) of the same job is in progress."""
