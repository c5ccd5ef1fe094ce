"""Where the job store keeps its Lua and its key names: one file per script, each
documented, none inline; every key built by ``store.keys``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import curator_worker
from curator_worker.store import scripts
from curator_worker.store.keys import (
    JOB_PARTS,
    job_key,
    job_keys,
    plan_entry,
    retry_prefix,
    retry_round,
)

PACKAGE = Path(curator_worker.__file__).parent
PRODUCER = PACKAGE.parent / "producer"


def test_every_lua_file_is_a_registered_script_with_its_keys_and_return_documented() -> None:
    files = {p.stem for p in resources.files("curator_worker.store").joinpath("lua").iterdir()
             if p.name.endswith(".lua")}
    assert files == set(scripts.NAMES)
    for name in scripts.NAMES:
        text = scripts.source(name)
        assert text.startswith("-- "), f"{name}.lua has no header saying what it does"
        assert "KEYS[1]" in text.split("\nif", 1)[0] or "KEYS[1]" in text[:1500], name
        assert "Returns" in text or "returns" in text, f"{name}.lua does not say what it returns"


def test_an_unknown_script_name_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="no Lua script 'nope'"):
        scripts.source("nope")


def test_no_lua_is_written_inline_outside_the_store_scripts() -> None:
    offenders = [str(p.relative_to(PACKAGE.parent))
                 for root in (PACKAGE, PRODUCER) for p in root.rglob("*.py")
                 if "redis.call(" in p.read_text()]
    assert offenders == []


def test_no_module_outside_store_keys_spells_a_job_key() -> None:
    offenders = [str(p.relative_to(PACKAGE.parent))
                 for root in (PACKAGE, PRODUCER) for p in root.rglob("*.py")
                 if p.name != "keys.py" and ('"curator:job:' in p.read_text()
                                             or "f\"curator:" in p.read_text())]
    assert offenders == []


def test_job_keys_cover_every_part_of_a_jobs_namespace() -> None:
    assert job_key("j") == "curator:job:j"
    assert job_key("j", "batches") == "curator:job:j:batches"
    assert job_keys("j") == [job_key("j", part) for part in JOB_PARTS]
    assert job_keys("j")[0] == "curator:job:j"


def test_retry_rounds_are_read_back_from_the_batch_keys_they_prefix() -> None:
    assert retry_round("b000001") == 0
    assert retry_round(retry_prefix(3) + "000001") == 3
    assert retry_round(retry_prefix(12) + "000001") == 12


def test_a_plan_entry_is_the_json_text_workers_compare_messages_with() -> None:
    assert plan_entry(range(3)) == "[0, 1, 2]"
    assert plan_entry([5]) == "[5]"


def test_the_earlier_import_path_gives_the_same_objects() -> None:
    from curator_worker import jobs, store

    for name in store.__all__:
        assert getattr(jobs, name) is getattr(store, name), name
