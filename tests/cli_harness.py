"""Running the real `linkedout` command in a subprocess, for the table-driven error tests.

Each case asserts what the README promises for bad input: exit code 2, one line on stderr that
starts with `error: `, no traceback, and nothing stored changed (`tree_digest` before and after).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

LINKEDOUT = str(Path(sys.executable).with_name("linkedout"))


def run_linkedout(
    argv: list[str], *, timeout: float = 180, env: dict[str, str] | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """The installed `linkedout` console script, as a user runs it (one thread: tests share
    two cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [LINKEDOUT, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with `error: ` that holds every
    fragment, and no traceback anywhere."""
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    assert proc.returncode == 2, detail
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("error: "), detail
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def tree_digest(path: str | Path) -> str:
    """A digest of every file's relative path and bytes under `path` (or of the file itself):
    equal before and after means nothing stored was touched."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
