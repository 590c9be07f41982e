"""Run a real gateway process over loopback for tests: `python -m odock serve` with its own SQLite file (or the
PostgreSQL/Redis given), seeded through the catalogue service, talking to the project's mock provider."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from odock.settings import Settings
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """One `odock serve` subprocess; `base_url` is ready once `start()` returns."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None = None,
        redis_url: str = "",
        env: dict[str, str] | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_token = "admin-" + secrets.token_urlsafe(8)
        self.database_url = database_url or f"sqlite:///{workdir / 'odock.db'}"
        self.secret_key = secret_key or base64.b64encode(os.urandom(32)).decode()
        self.env = {
            **os.environ,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "ODOCK_DATABASE_URL": self.database_url,
            "ODOCK_REDIS_URL": redis_url,
            "ODOCK_SECRET_KEY": self.secret_key,
            "ODOCK_ADMIN_TOKEN": self.admin_token,
            "ODOCK_USAGE_FLUSH_INTERVAL": "50ms",
            "ODOCK_LOG_LEVEL": "warning",
            "HTTP_READ_TIMEOUT": "2s",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"gateway-{self.port}.log"

    def settings(self) -> Settings:
        return Settings(database_url=self.database_url, secret_key=self.secret_key)

    async def open_service(self) -> CatalogueService:
        """A catalogue service on the same database (the CLI's view: changes reach the gateway by polling)."""
        return CatalogueService(await SqlStore.open(self.database_url, self.settings()))

    def start(self, *args: str) -> None:
        with self.log_path.open("ab") as log:
            command = os.environ.get("ODOCK_TEST_SERVE_CMD", f"{sys.executable} -m odock serve").split()
            self.proc = subprocess.Popen(
                [*command, *args], env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the process (SIGTERM: graceful, flushes usage) and return its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


async def seed_basic(service: CatalogueService, mock_url: str, *, org: str = "acme") -> dict[str, Any]:
    """Create one organisation with providers of every type on the mock, chat models, and a granted key."""
    os.environ.setdefault("ODOCK_TEST_PROVIDER_KEY", "sk-upstream-test")
    await service.create_organisation({"name": org})
    for ptype, base in (
        ("openai", f"{mock_url}/v1"),
        ("anthropic", mock_url),
        ("gemini", mock_url),
        ("vllm", f"{mock_url}/v1"),
    ):
        await service.create_provider(
            {
                "organisation": org,
                "name": f"mock-{ptype}",
                "type": ptype,
                "base_url": base,
                "api_key": "sk-upstream-test",
            }
        )
    models = {
        "gpt-test": ("mock-openai", "gpt-4o-mini"),
        "claude-test": ("mock-anthropic", "claude-sonnet-4-5"),
        "gemini-test": ("mock-gemini", "gemini-2.5-flash"),
        "vllm-test": ("mock-vllm", "meta-llama/Llama-3.1-8B-Instruct"),
        "gpt-broken": ("mock-openai", "gpt-4o-mini;status=500"),
        "gpt-ungranted": ("mock-openai", "gpt-4o-mini"),
    }
    for name, (provider, slug) in models.items():
        await service.create_model(
            {
                "organisation": org,
                "name": name,
                "provider": provider,
                "slug": slug,
                "type": "chat",
                "pricing": {"input": 1.0, "output": 2.0},
            }
        )
    # non-chat models of the native routes (embeddings, images, vLLM audio)
    typed_models = {
        "embed-test": ("mock-openai", "text-embedding-3-small", "embeddings"),
        "image-test": ("mock-openai", "gpt-image-1", "image"),
        "vllm-whisper": ("mock-vllm", "openai/whisper-large-v3", "transcription"),
    }
    for name, (provider, slug, mtype) in typed_models.items():
        await service.create_model(
            {
                "organisation": org,
                "name": name,
                "provider": provider,
                "slug": slug,
                "type": mtype,
                "pricing": {"input": 1.0, "output": 2.0},
            }
        )
    granted = [m for m in models if m != "gpt-ungranted"] + list(typed_models)
    created = await service.create_key(
        {"organisation": org, "name": "main", "type": "ORGANISATION", "models": granted}
    )
    return {"org": org, "secret": created.secret, "key_id": created.key.id, "models": models}


@asynccontextmanager
async def seeded_gateway(
    workdir: Path, mock_url: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    """A gateway process on a `seed_basic` catalogue, started, with its key's secret; stopped on exit."""
    proc = GatewayProcess(workdir, env=env)
    service = await proc.open_service()
    try:
        secret = str((await seed_basic(service, mock_url))["secret"])
    finally:
        await service.store.close()
    proc.start()
    try:
        yield proc, secret
    finally:
        proc.stop()


async def usage_rows(store: SqlStore, request_id: str) -> list[dict[str, Any]]:
    """The stored usage rows carrying a request id, oldest first (the batch writer may not have written yet)."""
    import sqlalchemy as sa

    from odock.state import schema

    table = schema.usage_records
    async with store.read() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(table).where(table.c.request_id == request_id).order_by(table.c.id)
                )
            )
            .mappings()
            .all()
        )
    return [dict(row) for row in rows]


async def usage_record(store: SqlStore, request_id: str) -> dict[str, Any] | None:
    """The stored usage row of one call, or None while the batch writer has not written it yet."""
    rows = await usage_rows(store, request_id)
    return rows[0] if rows else None


async def wait_usage(
    service: CatalogueService, request_id: str, timeout: float = 5.0, count: int = 1
) -> dict[str, Any]:
    """Poll the ledger until the gateway's batch writer stored `count` records for the request id; the first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await usage_rows(service.store, request_id)
        if len(rows) >= count:
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} usage records for {request_id}")
