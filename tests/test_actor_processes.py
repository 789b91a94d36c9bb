"""Actors shared by several OS processes, and a bank that survives SIGKILL, on both backends.

The processes share nothing but storage: linearizability comes from the versioned
compare-and-set commit, exactly-once transfers from idempotency keys and the outbox.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from _procs import child, sigkill

pytestmark = pytest.mark.slow

MODEL = """
import time
from actorflow import workflow


@workflow.virtual_actor
class Tally:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    @workflow.virtual_actor.readonly
    def value(self):
        return self.n


@workflow.virtual_actor
class Account:
    def __init__(self, balance=0):
        self.balance = balance

    def deposit(self, amount):
        time.sleep(0.15)  # slow receivers keep messages in flight when the process dies
        self.balance += amount
        return self.balance

    def transfer(self, to, amount):
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        workflow.send(to.deposit, amount)
        return self.balance

    @workflow.virtual_actor.readonly
    def read(self):
        return self.balance
"""

INCREMENTER = """
import json, sys
from actorflow import workflow
from model import Tally

workflow.init(sys.argv[1])
t = Tally.get("shared")  # nobody creates it: the first call of the four processes activates it
print(json.dumps([t.incr.run() for _ in range(int(sys.argv[2]))]), flush=True)
"""

BANK = """
import sys
from actorflow import workflow
from model import Account
from plan import TRANSFERS

workflow.init(sys.argv[1])
accounts = [Account.get_or_create(f"acct{i}", 100) for i in range(5)]
calls = [
    accounts[src].transfer.options(idempotency_key=f"transfer-{n}").run_async(accounts[dst], amount)
    for n, (src, dst, amount) in enumerate(TRANSFERS)
]
for n, call in enumerate(calls):
    call.result(timeout=120)
    print("committed", n, flush=True)
print("all committed", flush=True)
import time
time.sleep(600)  # deliveries go on in the background until the test kills us
"""

# 20 transfers among 5 accounts; no account ever sends more than it started with.
TRANSFERS = [(n % 5, (n * 3 + 1) % 5 if (n * 3 + 1) % 5 != n % 5 else (n + 2) % 5, n + 1) for n in range(20)]


def _write(tmp: pathlib.Path) -> dict[str, str]:
    (tmp / "model.py").write_text(MODEL)
    (tmp / "plan.py").write_text(f"TRANSFERS = {TRANSFERS!r}\n")
    (tmp / "incr.py").write_text(INCREMENTER)
    (tmp / "bank.py").write_text(BANK)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}


def test_four_processes_increment_one_actor(tmp_path: pathlib.Path, storage_url: str) -> None:
    env = _write(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "incr.py"), storage_url, "250"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    returned: list[int] = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err.decode()[-3000:]
            values = json.loads(out.decode().strip().splitlines()[-1])
            assert values == sorted(values)  # each process sees its own calls in order
            returned += values
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert sorted(returned) == list(range(1, 1001))

    sys.path.insert(0, str(tmp_path))
    try:
        from actorflow import workflow

        workflow.init(storage_url)
        import model  # type: ignore[import-not-found]

        assert model.Tally.get("shared").value.run() == 1000
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)


def test_bank_transfers_survive_sigkill(tmp_path: pathlib.Path, storage_url: str) -> None:
    env = _write(tmp_path)
    args = [sys.executable, str(tmp_path / "bank.py"), storage_url]
    committed = 0
    with child(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        seen: list[str] = []
        while committed < 10:  # kill it in the middle: some transfers committed, deliveries pending
            line = proc.stdout.readline()
            seen.append(line)
            assert line, "bank process ended early:\n" + "".join(seen)
            if line.startswith("committed"):
                committed += 1
            assert time.monotonic() < deadline
        sigkill(proc)

    sys.path.insert(0, str(tmp_path))
    try:
        from actorflow import workflow
        from actorflow.actor import actor_runtime
        from actorflow.engine import default_runtime

        workflow.init(storage_url)
        import model  # type: ignore[import-not-found]

        rt = actor_runtime(default_runtime())
        rt.config.outbox_grace = 0.5
        pending = rt.workflows.blocking(rt.outbox.size())
        accounts = [model.Account.get(f"acct{i}") for i in range(5)]
        # The restarted client retries every transfer under its original key.
        for n, (src, dst, amount) in enumerate(TRANSFERS):
            accounts[src].transfer.options(idempotency_key=f"transfer-{n}").run(accounts[dst], amount)
        deadline = time.monotonic() + 120
        while rt.workflows.blocking(rt.outbox.size()) > 0:
            assert time.monotonic() < deadline, "messages were never delivered"
            time.sleep(0.1)
        expected = [100] * 5
        for src, dst, amount in TRANSFERS:
            expected[src] -= amount
            expected[dst] += amount
        balances = [a.read.run() for a in accounts]
        assert sum(balances) == 500
        assert balances == expected  # every transfer applied exactly once
        assert pending > 0  # the kill really left messages in flight
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)
