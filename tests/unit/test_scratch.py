"""Local scratch folders of object-storage shards and merges: removed on exit, and once
their process was killed inside the block, by the next run on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from curator_worker.atomic import remove_stale_scratch, scratch_dir

REPO = Path(__file__).resolve().parents[2]


def test_scratch_dir_is_removed_with_its_files_even_when_the_block_raises(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        with scratch_dir("shard") as folder:
            Path(folder, "x.shard").write_bytes(b"state")
            raise RuntimeError("flush failed")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_scratch_folder_of_a_killed_process_is_removed_and_a_live_ones_kept(
    tmp_path: Path,
) -> None:
    script = ("import os, tempfile; tempfile.tempdir = os.environ['SCRATCH']\n"
              "from curator_worker.atomic import scratch_dir\n"
              "with scratch_dir('merge') as d:\n"
              "    open(os.path.join(d, 'copy.shard'), 'wb').write(b'x')\n"
              "    os.kill(os.getpid(), 9)\n")
    env = {**os.environ, "SCRATCH": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert done.returncode == -9
    [left] = list(tmp_path.iterdir())
    assert left.name.startswith("curator-merge.") and (left / "copy.shard").exists()
    live = tmp_path / f"curator-shard.{left.name.split('.')[1]}.{os.getpid()}.abc"
    live.mkdir()
    other_host = tmp_path / "curator-shard.elsewhere.1.abc"
    other_host.mkdir()

    assert remove_stale_scratch(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])
