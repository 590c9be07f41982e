"""Declarative catalogue file: idempotent apply, env references, literal secrets refused, exact grants."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from odock.config_file import ConfigFileError, apply_config, load_config
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore

FILE = """
organisations:
  - name: acme
    timezone: UTC
    policies: {}
    teams: [{name: platform, policies: {}}]
    users: [{email: dev@acme.test, name: Dev}]
providers:
  - organisation: acme
    name: mock-openai
    type: openai
    base_url: http://127.0.0.1:9000/v1
    api_key: ${OPENAI_API_KEY}
    timeout_ms: 30000
    enabled: true
models:
  - organisation: acme
    name: my-chat-model
    provider: mock-openai
    slug: gpt-4o-mini
    type: chat
    capabilities: [tool_use, vision]
    pricing: {input: 0.15, output: 0.60, cached_input: 0.075, cache_write: 0.1875, reasoning: 0.60}
    policies: {}
  - organisation: acme
    name: other-model
    provider: mock-openai
    slug: gpt-4o
keys:
  - organisation: acme
    name: bench-key
    type: ORGANISATION
    secret: ${ODOCK_BENCH_KEY}
    expires_at: 2099-01-01T00:00:00Z
    policies: {}
    models: [my-chat-model]
  - organisation: acme
    name: team-key
    type: TEAM
    team: platform
    models: [my-chat-model, other-model]
"""

ENV = {
    "OPENAI_API_KEY": "sk-upstream-from-env-0001",
    "ODOCK_BENCH_KEY": "sk-odock-bench-key-0123456789abcdef",
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(text)
    return path


async def test_apply_twice_changes_nothing(
    store: SqlStore, service: CatalogueService, tmp_path: Path
) -> None:
    """The first apply creates everything; the second reports no changes and leaves the catalogue version alone."""
    path = _write(tmp_path, FILE)
    first = await apply_config(service, path, ENV)
    assert first.changed and len(first.created) == 8 and not first.updated
    assert list(first.generated_secrets) == ["acme/team-key"]
    version = await store.catalogue_version()
    second = await apply_config(service, path, ENV)
    assert not second.changed, second
    assert len(second.unchanged) == 8 and second.summary().startswith("no changes")
    assert await store.catalogue_version() == version
    key = await store.find_key(hashlib.sha256(ENV["ODOCK_BENCH_KEY"].encode()).hexdigest())
    assert key is not None and key.name == "bench-key"
    provider = await store.get_provider((await service.list_providers("acme"))[0].id)
    assert provider is not None and provider.api_key == ENV["OPENAI_API_KEY"] and provider.timeout_ms == 30000
    team_key = await service.get_key("team-key", "acme")
    assert len(await store.granted_model_ids(team_key.id)) == 2


async def test_apply_updates_only_what_changed(service: CatalogueService, tmp_path: Path) -> None:
    """A changed field, env secret or grant list is updated in place; grants become exactly the listed models."""
    await apply_config(service, _write(tmp_path, FILE), ENV)
    edited = FILE.replace("slug: gpt-4o-mini", "slug: gpt-4.1-mini").replace(
        "models: [my-chat-model, other-model]", "models: [other-model]"
    )
    env = {**ENV, "OPENAI_API_KEY": "sk-upstream-rotated-0002"}
    report = await apply_config(service, _write(tmp_path, edited), env)
    assert sorted(u.split(" (")[0] for u in report.updated) == [
        "key acme/team-key",
        "model acme/my-chat-model",
        "provider acme/mock-openai",
    ]
    assert "sk-upstream" not in repr(report.updated)
    assert (await service.get_model("my-chat-model", "acme")).slug == "gpt-4.1-mini"
    assert [m.name for m in await service.list_grants("team-key", "acme")] == ["other-model"]
    assert await service.provider_api_key("mock-openai", "acme") == "sk-upstream-rotated-0002"


async def test_missing_variable_is_named(service: CatalogueService, tmp_path: Path) -> None:
    """A ${VAR} that is not set is an error naming the variable, before any change."""
    with pytest.raises(ConfigFileError, match="OPENAI_API_KEY"):
        await apply_config(service, _write(tmp_path, FILE), {"ODOCK_BENCH_KEY": ENV["ODOCK_BENCH_KEY"]})
    assert await service.list_organisations() == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("api_key: ${OPENAI_API_KEY}", "api_key: sk-literal-secret"),
        ("secret: ${ODOCK_BENCH_KEY}", "secret: sk-odock-literal-secret-value-123"),
        ("api_key: ${OPENAI_API_KEY}", "api_key: prefix-${OPENAI_API_KEY}"),
    ],
)
def test_literal_secrets_refused(tmp_path: Path, old: str, new: str) -> None:
    """An inline literal provider api_key or key secret is refused with a message saying to use ${VAR}."""
    with pytest.raises(ConfigFileError, match="inline secrets are refused"):
        load_config(_write(tmp_path, FILE.replace(old, new)), ENV)


def test_unknown_fields_and_bad_yaml(tmp_path: Path) -> None:
    """Typos in field or section names and broken YAML are reported with their place."""
    with pytest.raises(ConfigFileError, match=r"models\[0\]: unknown field\(s\) slugg"):
        load_config(_write(tmp_path, FILE.replace("slug: gpt-4o-mini", "slugg: gpt-4o-mini")), ENV)
    with pytest.raises(ConfigFileError, match="unknown section"):
        load_config(_write(tmp_path, "organisation: []\n"), ENV)
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_config(_write(tmp_path, "organisations: [\n"), ENV)


async def test_report_text_hides_generated_secrets(service: CatalogueService, tmp_path: Path) -> None:
    """str()/repr() of the apply report (which callers log) never contain a generated secret."""
    report = await apply_config(service, _write(tmp_path, FILE), ENV)
    secret = report.generated_secrets["acme/team-key"]
    assert secret not in str(report) and secret not in repr(report) and "acme/team-key" in str(report)
