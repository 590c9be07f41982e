"""Peer gateways beside ours: LiteLLM's proxy and Portkey's gateway, installed under bench/.peers/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bench.procs import Service, Supervisor, free_port
from bench.scenarios import OPENAI_MODEL, OPENAI_SLUG, Call, Scenario, openai_call

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
LITELLM_VENV = PEERS_DIR / "litellm"
PORTKEY_DIR = PEERS_DIR / "portkey"
PORTKEY_ENTRY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"

# LiteLLM's documented production settings, logging and telemetry off; no database, so no spend writes
LITELLM_ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map from the internet at start
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
}
PORTKEY_ENV = {"NODE_ENV": "production"}


def _run(argv: list[str], cwd: Path | None = None) -> None:
    print("  $", " ".join(argv), flush=True)
    subprocess.run(argv, cwd=cwd, check=True, timeout=900)


def ensure_litellm() -> Path:
    """Return LiteLLM's `litellm` entry point, installing `litellm[proxy]` into a venv if missing."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    if shutil.which("uv"):
        _run(["uv", "venv", "-q", "--python", sys.executable, str(LITELLM_VENV)])
        _run(
            ["uv", "pip", "install", "-q", "--python", str(LITELLM_VENV / "bin" / "python"), "litellm[proxy]"]
        )
    else:
        _run([sys.executable, "-m", "venv", str(LITELLM_VENV)])
        _run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"])
    return exe


# @hono/node-server newer than 1.14.2 makes Portkey fail with "TypeError: immutable" (Portkey-AI/gateway#1389)
HONO_PIN = "1.14.2"


def ensure_portkey() -> Path:
    """Return Portkey's node server entry, installing @portkey-ai/gateway (with the working hono) if missing."""
    if PORTKEY_ENTRY.exists() and _hono_versions() == {HONO_PIN}:
        return PORTKEY_ENTRY
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    # an override, not only a top-level pin: npm otherwise nests a newer copy under the gateway package
    manifest = {
        "name": "bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": "^1.15.2", "@hono/node-server": HONO_PIN},
        "overrides": {"@hono/node-server": "$@hono/node-server"},
    }
    (PORTKEY_DIR / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(PORTKEY_DIR / "node_modules", ignore_errors=True)
    (PORTKEY_DIR / "package-lock.json").unlink(missing_ok=True)
    _run(["npm", "install", "--no-audit", "--no-fund"], cwd=PORTKEY_DIR)
    if _hono_versions() != {HONO_PIN}:
        raise RuntimeError(
            f"Portkey install: @hono/node-server versions {_hono_versions()}, wanted {HONO_PIN}"
        )
    return PORTKEY_ENTRY


def _hono_versions() -> set[str]:
    found = (PORTKEY_DIR / "node_modules").glob("**/@hono/node-server/package.json")
    return {str(json.loads(p.read_text()).get("version")) for p in found}


def litellm_config(mock_url: str) -> dict[str, object]:
    """Return LiteLLM's config.yaml: one OpenAI-compatible deployment on the mock, production settings."""
    return {
        "model_list": [
            {
                "model_name": OPENAI_MODEL,
                "litellm_params": {
                    "model": f"openai/{OPENAI_SLUG}",
                    "api_base": f"{mock_url}/v1",
                    "api_key": "sk-bench-upstream",
                },
            }
        ],
        "litellm_settings": {
            "set_verbose": False,
            "json_logs": True,
            "request_timeout": 600,
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
        "general_settings": {
            "master_key": LITELLM_MASTER_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "proxy_batch_write_at": 60,
        },
    }


def start_litellm(sup: Supervisor, mock_url: str, cpu: int | None) -> Service:
    """Start LiteLLM's proxy (one worker) in front of the mock and wait until it is live."""
    exe = ensure_litellm()
    cfg = sup.workdir / "litellm.yaml"
    cfg.write_text(yaml.safe_dump(litellm_config(mock_url)))
    port = free_port()
    svc = sup.start(
        "litellm",
        [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        port,
        env=LITELLM_ENV,
        cpu=cpu,
    )
    svc.wait_ready("/health/liveliness", timeout=180)
    return svc


def start_portkey(sup: Supervisor, cpu: int | None) -> Service:
    """Start Portkey's node gateway (one process) and wait until it answers."""
    entry = ensure_portkey()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    port = free_port()
    svc = sup.start(
        "portkey",
        [node, str(entry), f"--port={port}", "--headless"],
        port,
        env=PORTKEY_ENV,
        cpu=cpu,
        cwd=PORTKEY_DIR,
    )
    svc.wait_ready("/", timeout=60)
    return svc


def start_forwarder(sup: Supervisor, mock_url: str, cpu: int | None) -> Service:
    """Start the bare Python forwarder (bench/forwarder.py) in front of the mock and wait until it answers."""
    from bench.forwarder import HEALTH

    port = free_port()
    svc = sup.start(
        "forwarder",
        [sys.executable, "-m", "bench.forwarder", "--port", str(port), "--upstream", mock_url],
        port,
        cpu=cpu,
        cwd=Path(__file__).resolve().parent.parent,
    )
    svc.wait_ready(HEALTH, timeout=60)
    return svc


def peer_call(peer: str, scenario: Scenario, mock_url: str) -> Call:
    """Return the scenario's call as `peer` takes it (same body shape, the peer's auth and routing)."""
    if peer == "forwarder":
        return scenario.direct  # relayed as is: the upstream's model slug and key, no gateway auth
    if peer == "litellm":
        return openai_call(LITELLM_MASTER_KEY, OPENAI_MODEL, scenario.stream)
    if peer == "portkey":
        base = openai_call("sk-bench-upstream", OPENAI_SLUG, scenario.stream)
        headers = {**base.headers, "x-portkey-provider": "openai", "x-portkey-custom-host": f"{mock_url}/v1"}
        return Call(base.path, base.body, headers, base.expect)
    raise ValueError(peer)


def describe_flags() -> str:
    """Return the peer settings used, for the results file."""
    return json.dumps(
        {"litellm_env": LITELLM_ENV, "portkey_env": PORTKEY_ENV, "litellm_config": litellm_config("<mock>")}
    )
