"""A stateful filter's shards, from name to removal: the one home every backend calls.

A batch gets private copies of the pipeline's stateful filters; after it ran, each copy is
flushed into a *shard*. This module owns every step of a shard's life:

- **naming**: ``<final output>.shards/<run id>/<batch key>.<host>-<pid>-<token>.shard``
  (:func:`shard_location`, :func:`shard_name`, :func:`attempt_token`), unique to one
  attempt on any host or container; run ids and batch keys must be safe names
  (:func:`is_safe_name`), so no shard ever lands outside its folder;
- **writing, temp then commit** (:func:`write_shards`): a flush goes to a fresh temp path
  renamed to the shard name when complete; for an output on object storage (a URL) the
  flushed local temp file is uploaded to the shard key in one write (no rename there).
  The batch's commit record (job store) names the shards that count;
- **merging** (:func:`merge_shards`): committed shards only, into the final output in one
  rename (or one write of the final key), refused when the gather lost its lock;
- **removal**: a losing attempt's own shards (:func:`discard_files`), every shard of a run
  once merged (:func:`remove_shard_location`).

Final outputs written straight from one filter (no shards: :func:`flush_final`) follow the
same never-partial rule.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from curator_worker.atomic import atomic_path, scratch_dir, temp_path_for
from curator_worker.batch import BatchOutcome
from curator_worker.contract.pipeline import Filter, Pipeline
from curator_worker.errors import PipelineError
from curator_worker.outcome import HOSTNAME

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".shard"

#: What a run id (job id) or batch key must look like to become part of a file name: ASCII
#: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot, at most 200 characters.
#: No separator, no ``..``, no NUL, nothing a file system or a terminal reads differently.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)


def is_safe_name(name: object) -> bool:
    """True when ``name`` may be part of a file name (:data:`SAFE_NAME`).

    Examples
    --------
    >>> is_safe_name("b000123"), is_safe_name("r2-b000001"), is_safe_name("../x")
    (True, True, False)
    """
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def _require_safe_name(name: str, what: str) -> None:
    if not is_safe_name(name):
        raise ValueError(
            f"Refusing {what} {ascii(name)[:80]} in a file name: use ASCII letters, digits, "
            "'.', '_' and '-' (not first), at most 200 characters."
        )

def output_path_of(f: Filter[Any]) -> str:
    """The final output path of stateful filter ``f`` (its ``_output_path``).

    Raises
    ------
    PipelineError
        If the filter has neither ``_output_path`` nor an artifact to name its output.
    """
    path = getattr(f, "_output_path", None)
    if not path:
        artifacts = f.artifacts() if hasattr(f, "artifacts") else []
        path = artifacts[0] if artifacts else None
    if not path:
        raise PipelineError(
            f"Stateful filter {type(f).__name__} has no _output_path. Set it in __init__ to "
            "the final output file."
        )
    return os.fspath(path)


def shard_dir(final_output: str, run_id: str) -> Path:
    """Folder of the shards of one run (job) for a stateful filter's output.

    ``ValueError`` unless ``run_id`` is a safe name (:func:`is_safe_name`): the folder is
    always directly inside ``<final_output>.shards``. For a URL output use
    :func:`shard_location` (this returns a local :class:`~pathlib.Path`).
    """
    _require_safe_name(run_id, "run id")
    return Path(f"{final_output}.shards") / run_id


def is_url(path: str) -> bool:
    """True when ``path`` is an fsspec URL other than ``file://`` (e.g. ``s3://b/k``)."""
    from curator_worker.components.storage import is_remote

    return is_remote(path)


def shard_location(final_output: str, run_id: str) -> str:
    """Where the shards of one run of a stateful filter's output go: a folder or a prefix.

    ``<final_output>.shards/<run_id>``, for a local path (made absolute) or a URL alike:
    the one place shard names are made (:func:`shard_name` names the files in it).

    Examples
    --------
    >>> shard_location("s3://bucket/stats.json", "job1")
    's3://bucket/stats.json.shards/job1'
    """
    _require_safe_name(run_id, "run id")
    if is_url(final_output):
        return f"{final_output}.shards/{run_id}"
    return os.fspath(shard_dir(os.path.abspath(final_output), run_id))


def shard_name(key: str, token: str) -> str:
    """The file (object) name of one attempt's shard of batch ``key``."""
    return f"{key}.{token}{SHARD_SUFFIX}"


def attempt_token() -> str:
    """``<host>-<pid>-<random>``: unique to one attempt, on any host or container."""
    return f"{_token_part(HOSTNAME)}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def storage_options_of(f: Filter[Any]) -> dict[str, Any]:
    """The resolved fsspec ``storage_options`` of filter ``f`` (``{}`` when it has none).

    ``"${VARIABLE}"`` values are read from this process's environment; credentials are
    never stored in a shard name or a commit record.
    """
    options = getattr(f, "storage_options", None)
    if not options:
        return {}
    from curator_worker.components.storage import resolve_storage_options

    return resolve_storage_options(options, type(f).__name__)

def flush_to(f: Filter[Any], path: str) -> str | None:
    """Flush stateful filter ``f`` into ``path``; return the file written, if any.

    ``_output_path`` keeps its type: physicsnemo-curator's filters hold a ``pathlib.Path``
    and call its methods in ``flush()``.
    """
    old = getattr(f, "_output_path", None)
    f._output_path = type(old)(path) if isinstance(old, PurePath) else path  # type: ignore[attr-defined]
    returned = f.flush()  # type: ignore[attr-defined]
    written = os.fspath(returned) if isinstance(returned, str | os.PathLike) else path
    return written if os.path.exists(written) else None


def flush_final(f: Filter[Any], final: str) -> str | None:
    """Flush stateful filter ``f`` straight into its final output ``final``, never partially.

    The flush writes a local temporary file; a local ``final`` is replaced by it in one
    rename, a URL gets its content in one write of the final key (one PUT). Returns
    ``final``, or None when ``flush`` wrote nothing.
    """
    from curator_worker.atomic import scratch_dir, temp_path_for
    from curator_worker.components.storage import upload_file

    if not is_url(final):
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        written = flush_to(f, str(temp_path_for(final)))
        if written is None:
            return None
        os.replace(written, final)
        return final
    with scratch_dir("flush") as folder:
        written = flush_to(f, os.path.join(folder, os.path.basename(final) or "output"))
        if written is None:
            return None
        upload_file(written, final, storage_options_of(f))
    return final


def write_shards(
    pipeline: Pipeline, outcome: BatchOutcome, run_id: str, batch_key: str
) -> dict[str, str]:
    """Flush each stateful filter of ``outcome`` to a shard unique to this attempt.

    See :func:`write_filter_shards`. Returns filter position (as str) -> shard path.
    """
    return write_filter_shards(
        pipeline, outcome.filters, outcome.stateful_positions, run_id, batch_key
    )


def write_filter_shards(
    pipeline: Pipeline,
    filters: Sequence[Filter[Any]],
    positions: Sequence[int],
    run_id: str,
    key: str,
) -> dict[str, str]:
    """Flush the stateful filter copies ``filters[n]`` (``n`` in ``positions``) to shards.

    Each flush goes to a fresh temp path (so a ``flush`` that appends to ``_output_path``
    never appends to an older attempt's file). For a local output the temp file sits in
    the shard folder and is renamed to the shard name only when complete (``os.replace``),
    so a crash never leaves a half-written shard under a shard name. For a URL output
    (object storage has no rename) the flush writes a local temp file which is uploaded to
    the attempt-unique shard key in one write: an object under a shard key is complete or
    absent. Shard names carry host, pid and a random token (:func:`attempt_token`): two
    hosts, containers or attempts never collide; the commit record says which one counts.
    Returns filter position (as str) -> absolute shard path or URL.

    ``run_id`` and ``key`` must be safe names (:func:`is_safe_name`), so every file stays
    in its filter's shard folder; ``ValueError`` otherwise, before anything is written.
    """
    _require_safe_name(run_id, "run id")
    _require_safe_name(key, "batch key")
    token = attempt_token()
    shards: dict[str, str] = {}
    if any(is_url(output_path_of(pipeline.filters[n])) for n in positions):
        from curator_worker.atomic import remove_stale_scratch

        remove_stale_scratch()  # local copies of attempts killed on this host
    for n in positions:
        location = shard_location(output_path_of(pipeline.filters[n]), run_id)
        name = shard_name(key, token)
        if is_url(location):
            from curator_worker.atomic import scratch_dir
            from curator_worker.components.storage import join, upload_file

            with scratch_dir("shard") as folder:
                written = flush_to(filters[n], os.path.join(folder, f"{key}.{token}.tmp"))
                if written is None:
                    continue
                shard = join(location, name)
                options = storage_options_of(pipeline.filters[n])
                upload_file(written, shard, options)
            _remember_options(shard, pipeline.filters[n])
            shards[str(n)] = shard
            continue
        folder = Path(location)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.{token}.tmp"
        written = flush_to(filters[n], str(tmp))
        if written is None:
            continue
        shard_path = folder / name
        os.replace(written, shard_path)
        shards[str(n)] = str(shard_path)
    return shards


def _token_part(text: str) -> str:
    """``text`` with every character a safe name does not allow replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "host"


#: Shard URL -> the filter whose ``storage_options`` wrote it, for the last few shards this
#: process wrote: :func:`discard_files` removes a losing attempt's shard objects with the
#: same options (credentials are resolved again then, never kept here).
_SHARD_WRITERS: dict[str, Filter[Any]] = {}
_SHARD_WRITERS_KEPT = 64


def _remember_options(url: str, f: Filter[Any]) -> None:
    _SHARD_WRITERS[url] = f
    while len(_SHARD_WRITERS) > _SHARD_WRITERS_KEPT:
        del _SHARD_WRITERS[next(iter(_SHARD_WRITERS))]


def discard_files(paths: Sequence[str], options: Mapping[str, Any] | None = None) -> None:
    """Remove files or objects (shards of an attempt that lost the commit race).

    A URL is removed with ``options``, else with the ``storage_options`` of the filter
    that wrote it in this process (best effort: a failure is logged; gather removes what
    is left under the job's shard prefix when the job succeeds).
    """
    urls = [p for p in paths if is_url(p)]
    if urls:
        from curator_worker.components.storage import remove_objects

        for url in urls:
            writer = _SHARD_WRITERS.pop(url, None)
            try:
                found = options if options is not None else (
                    storage_options_of(writer) if writer is not None else {})
            except ValueError as exc:  # a ${VARIABLE} no longer set
                log.warning("cannot remove %s: %s", url, exc)
                continue
            remove_objects([url], found)
    for path in paths:
        if is_url(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

class GatherLockLost(Exception):
    """This gather's lock expired (its node froze or stalled) and another may finish the job."""


def merge_shards(
    f: Filter[Any], shard_paths: Sequence[str], final_output: str,
    still_held: Callable[[], bool] | None = None,
) -> str:
    """Merge ``shard_paths`` with ``type(f).merge`` into ``final_output``, atomically.

    Local: the merge writes a temp file beside ``final_output`` that replaces it in one
    rename, and is removed if the merge fails. When ``final_output`` or a shard is a URL
    (object storage has no rename), the shards are first copied into a local temp folder,
    ``merge`` runs on those copies into a local temp file, and the result is written to
    ``final_output`` in one write of the final key: no object under a final name is ever
    partial, and ``merge`` itself only ever sees local files. ``still_held`` is asked just
    before the rename (or the write): when it says no (this gather lost its lock), nothing
    is written and :class:`GatherLockLost` raised, so a gather that lost its lock never
    replaces another gather's output.
    """
    if is_url(final_output) or any(is_url(p) for p in shard_paths):
        return _merge_via_local_copies(f, shard_paths, final_output, still_held)
    os.makedirs(os.path.dirname(os.path.abspath(final_output)), exist_ok=True)
    tmp = str(temp_path_for(final_output))
    written = tmp
    try:
        returned = type(f).merge(list(shard_paths), tmp)  # type: ignore[attr-defined]
        written = os.fspath(returned) if isinstance(returned, str | os.PathLike) else tmp
        if still_held is not None and not still_held():
            raise GatherLockLost(final_output)
        os.replace(written, final_output)
    except BaseException:
        for path in {tmp, written}:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    return final_output


def _merge_via_local_copies(
    f: Filter[Any], shard_paths: Sequence[str], final_output: str,
    still_held: Callable[[], bool] | None,
) -> str:
    """:func:`merge_shards` when the output or a shard is a URL (see there)."""
    from curator_worker.components.storage import download_file, upload_file

    options = storage_options_of(f)
    with scratch_dir("merge") as folder:
        copies = []
        for n, shard in enumerate(shard_paths):
            if is_url(shard):
                local = os.path.join(folder, f"{n:06d}-{shard.rsplit('/', 1)[-1]}")
                copies.append(download_file(shard, local, options))
            else:
                copies.append(shard)
        name = final_output.rstrip("/").rsplit("/", 1)[-1] or "merged"
        tmp = os.path.join(folder, f"merged-{name}")
        returned = type(f).merge(copies, tmp)  # type: ignore[attr-defined]
        written = os.fspath(returned) if isinstance(returned, str | os.PathLike) else tmp
        if still_held is not None and not still_held():
            raise GatherLockLost(final_output)
        if is_url(final_output):
            upload_file(written, final_output, options)
        else:
            with atomic_path(final_output) as target:
                shutil.copyfile(written, target)
    return final_output

def remove_shard_location(f: Filter[Any], run_id: str) -> None:
    """Remove every shard of run ``run_id`` of filter ``f``, committed or not.

    A local shard folder is removed with what it holds (and ``<output>.shards`` once no
    run uses it); a URL shard prefix is listed and every object under it removed, so the
    shards of attempts that died before committing go too. Best effort, never raises.
    """
    final = output_path_of(f)
    location = shard_location(final, run_id)
    if is_url(location):
        from curator_worker.components.storage import remove_prefix

        try:
            removed = remove_prefix(location, storage_options_of(f))
            log.info("removed %d shard objects under %s", removed, location)
        except Exception as exc:  # noqa: BLE001 - cleanup must not fail a finished job
            log.warning("could not remove the shards under %s: %s: %s", location,
                        type(exc).__name__, exc)
        return
    folder = Path(location)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the <output>.shards folder, once no run uses it
    except OSError:
        pass


def remove_shard_locations(stateful: Sequence[tuple[int, Filter[Any]]], run_id: str) -> None:
    """:func:`remove_shard_location` of each ``(position, filter)`` of ``stateful``."""
    for _, f in stateful:
        remove_shard_location(f, run_id)


def discard_losing_shards(shards: Iterable[str], merged: bool) -> None:
    """Remove the shards of an attempt that lost the commit race to another attempt.

    ``merged``: the job already succeeded, so gather removed the run's shard folders;
    the folders this attempt just made again are removed too once empty (the run's
    folder and ``<output>.shards``).
    """
    shards = list(shards)
    discard_files(shards)
    if merged:
        for shard in shards:
            if not is_url(shard):
                _remove_empty_dirs(os.path.dirname(shard), levels=2)


def _remove_empty_dirs(folder: str, levels: int) -> None:
    """Remove ``folder`` and up to ``levels - 1`` parents while they are empty."""
    for _ in range(levels):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)
