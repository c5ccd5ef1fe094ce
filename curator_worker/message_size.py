"""The cap on one task message's size (``CURATOR_MAX_MESSAGE_BYTES``): its default, its
bounds and how a value is read. Commands check it at start
(:func:`curator_worker.config.check_environment`); workers apply it to every message
(:mod:`curator_worker.trust`)."""

from __future__ import annotations

#: Default cap on a task message (body and headers), in bytes. A batch of 1,000,000 indices
#: (the largest one a 1,000,000-index job can have) is a message of about 8 MB.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20
#: Largest cap ``CURATOR_MAX_MESSAGE_BYTES`` may set (1 GiB; Redis strings end at 512 MB).
MAX_MESSAGE_BYTES_LIMIT = 2**30
MAX_MESSAGE_BYTES_VARIABLE = "CURATOR_MAX_MESSAGE_BYTES"


def message_bytes_cap(raw: str) -> int | None:
    """The message size cap a ``CURATOR_MAX_MESSAGE_BYTES`` value sets: a whole number of
    bytes from 1 to :data:`MAX_MESSAGE_BYTES_LIMIT` (``None`` for anything else; an empty
    value is the default)."""
    raw = raw.strip()
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    if raw.isascii() and raw.isdigit() and len(raw) <= 12 \
            and 0 < int(raw) <= MAX_MESSAGE_BYTES_LIMIT:
        return int(raw)
    return None
