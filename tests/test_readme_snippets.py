"""The README's first Python snippet as a user runs it: a script of its own, on the default
storage (here in a temporary per-user data folder), ending as scripts end. It must finish
quietly: nothing on stderr, in particular no traceback from a background loop (the timer
scheduler) finding its storage's thread gone as the interpreter exits."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_virtual_actor_snippet_runs_and_exits_quietly(tmp_path: pathlib.Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Virtual actors", 1)[1].split("\n## ", 1)[0]
    [snippet] = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    script = tmp_path / "snippet.py"
    script.write_text(snippet + "\nprint(c.value.run())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTORFLOW_", "RAY_ADDRESS"))}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), RAY_USAGE_STATS_ENABLED="0")
    # The second run finds the first one's actor in the default storage, and its keyed call
    # (idempotency_key="req-42") answers from the record: 4 increments, not 5.
    for expected in (5, 9):
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{expected}\n"
        assert done.stderr == "", done.stderr
    assert (tmp_path / "data" / "actorflow" / "actorflow.db").exists()


def test_the_testing_section_runs_as_written_and_fast() -> None:
    """The README's example tests of actorflow.testing, run here as pytest would run them:
    the module is the README's block, each ``test_`` function called; a day of timers in
    well under 2 s."""
    import time

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing without waiting", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict[str, object] = {"__name__": "readme_testing"}
    exec(compile(block, "README.md (Testing without waiting)", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        started = time.perf_counter()
        test()
        took = time.perf_counter() - started
        assert took < 2.0, f"{test.__name__} took {took:.2f} s"
