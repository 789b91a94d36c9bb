"""Redis over TLS (``rediss://``), as managed services require: a server with a certificate
from a test CA (made here with ``openssl``), on a TLS port the tests choose."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis import free_port, start_redis

from actorflow.errors import StorageUnavailableError
from actorflow.storage import Batch
from actorflow.storage.redis import RedisStorage

pytestmark = pytest.mark.timeout(60)
OPENSSL = shutil.which("openssl")


def _make_certificates(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it."""

    def run(*args: str) -> None:
        subprocess.run(
            [OPENSSL or "openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30
        )

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=actorflow test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``rediss://`` URL of a TLS-only-for-clients server (its plain port is for the harness)."""
    if OPENSSL is None:
        pytest.skip("openssl not found")
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certificates(certs)
    port = free_port()
    extra = (
        "--tls-port", str(port),
        "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with start_redis(tmp_path / "data", extra=extra):
        yield f"rediss://127.0.0.1:{port}/0", certs / "ca.crt"


async def _roundtrip(url: str) -> None:
    storage = await RedisStorage.open(url)
    try:
        assert await storage.commit(Batch().require("t/k", None).put("t/k", b"over tls"))
        assert await storage.get("t/k") == b"over tls"
        assert await storage.list_keys("t/") == ["t/k"]
    finally:
        await storage.close()


def test_rediss_with_the_servers_ca_works(tls_url: tuple[str, Path]) -> None:
    url, ca = tls_url
    asyncio.run(_roundtrip(f"{url}?ssl_ca_certs={ca}"))


def test_an_untrusted_certificate_is_refused_clearly(tls_url: tuple[str, Path]) -> None:
    url, _ = tls_url
    with pytest.raises(StorageUnavailableError, match=r"(?i)certificate"):
        asyncio.run(_roundtrip(url))
