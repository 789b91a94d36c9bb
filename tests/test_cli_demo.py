"""``actorflow demo`` runs on a storage of its own: the default storage, which the service and the
user's own code share, never receives the demo's workflows."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
REPO = pathlib.Path(__file__).resolve().parent.parent


def test_demo_leaves_the_default_storage_alone(tmp_path: pathlib.Path, ray_address: str) -> None:
    xdg = tmp_path / "xdg"
    env = {**os.environ, "XDG_DATA_HOME": str(xdg), "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    env.pop("ACTORFLOW_STORAGE", None)
    done = subprocess.run(
        [sys.executable, "-m", "actorflow.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"actorflow demo on storage sqlite://(\S+)/demo\.db", done.stdout)
    assert found, done.stdout
    assert "SUCCESSFUL" in done.stdout
    assert not (xdg / "actorflow" / "actorflow.db").exists()  # the default storage: untouched
    assert not pathlib.Path(found.group(1)).exists()  # its own storage is gone with it
