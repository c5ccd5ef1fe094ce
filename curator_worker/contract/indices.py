"""Index selections: ``--indices 0-99,200`` parsed, a run's indices checked against the
pipeline's length, one line for each mistake (:class:`IndexSelectionError`)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

from curator_worker.errors import IndexSelectionError


def parse_indices(text: str, length: int) -> list[int]:
    """Parse an index selection such as ``"0-99,200"`` (ranges inclusive).

    Parameters
    ----------
    text : str
        Comma-separated indices and ``a-b`` ranges.
    length : int
        Number of indices of the pipeline; every index must be below it.

    Returns
    -------
    list[int]
        The indices in the order given.

    Raises
    ------
    IndexSelectionError
        For malformed parts (``x``, ``5-2``), out-of-range indices and duplicates.

    Examples
    --------
    >>> parse_indices("0-2,7", 10)
    [0, 1, 2, 7]
    """
    indices: list[int] = []
    if not text or not text.strip():
        raise IndexSelectionError("Empty index list. Give indices like '0-99,200'.")
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise IndexSelectionError(
                f"Empty item in index list {text!r}. Separate indices with single commas."
            )
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise IndexSelectionError(
                f"Bad index {part!r} in {text!r}. Use non-negative integers and ranges like '0-99'."
            ) from None
        if hi < lo:
            raise IndexSelectionError(
                f"Bad range {part!r}: the end is before the start. Write it as '{hi}-{lo}'."
            )
        if length == 0:
            check_indices([], 0)  # raises: the source is empty
        if hi >= length:  # before expanding: a typo like '0-9999999999' must not eat memory
            raise IndexSelectionError(
                f"Index {hi} is out of range: the pipeline has {length} indices (0-{length - 1})."
            )
        indices.extend(range(lo, hi + 1))
    check_indices(indices, length)
    return indices


def ints_in_range(indices: Sequence[int], length: int) -> bool:
    """True when every index is a plain ``int`` in ``[0, length)`` (at C speed; repeats
    allowed). :func:`check_indices` names what is wrong otherwise."""
    return set(map(type, indices)) <= {int} and (
        len(indices) == 0 or (min(indices) >= 0 and max(indices) < length))


def check_indices(indices: Sequence[int], length: int) -> list[int]:
    """Validate a list of indices against a pipeline of ``length`` indices.

    Raises
    ------
    IndexSelectionError
        For an empty list, an out-of-range index or a duplicate.
    """
    if length == 0:
        raise IndexSelectionError(
            "No indices to run: the pipeline's source is empty (0 items). Check the "
            "source's params (its folder, pattern or count).")
    if len(indices) == 0:
        raise IndexSelectionError("No indices to run. Give at least one index.")
    if ints_in_range(indices, length):  # the common case, checked at C speed
        out = list(indices)
        if len(set(out)) == len(out):
            return out
    seen: set[int] = set()  # find and name the first bad index
    out: list[int] = []
    for i in indices:
        if isinstance(i, bool):
            raise IndexSelectionError(f"Index {i!r} is not an integer.")
        if not isinstance(i, int):
            try:
                i = operator.index(i)  # numpy integers; never truncate floats or parse strings
            except TypeError:
                raise IndexSelectionError(f"Index {i!r} is not an integer.") from None
        if not 0 <= i < length:
            raise IndexSelectionError(
                f"Index {i} is out of range: the pipeline has {length} indices (0-{length - 1})."
            )
        if i in seen:
            raise IndexSelectionError(f"Index {i} is selected twice. Give each index once.")
        seen.add(i)
        out.append(i)
    return out
