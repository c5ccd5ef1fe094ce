"""Chaos suite: kill workers, restart Redis, purge queues mid-job; outputs stay exactly-once."""
