"""Test support: fixtures' helpers and components importable by worker subprocesses."""
