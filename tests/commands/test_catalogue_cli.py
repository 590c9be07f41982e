"""Catalogue CLI commands, run in-process through their argparse parser against SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from odock.commands.catalogue import add_parsers
from odock.settings import Settings


@pytest.fixture()
def odock(
    db: tuple[str, Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> object:
    """Run `odock ARGS…` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setenv("ODOCK_DATABASE_URL", db[0])
    if db[1].secret_key:
        monkeypatch.setenv("ODOCK_SECRET_KEY", db[1].secret_key)
    parser = argparse.ArgumentParser(prog="odock")
    add_parsers(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(list(argv))
        code = args.func(args)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_catalogue_commands_end_to_end(odock: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """orgs/teams/users/providers/models/keys/grants commands create, list and change the catalogue."""
    run = odock  # type: ignore[assignment]
    assert run("orgs", "create", "acme")[0] == 0
    assert run("teams", "create", "platform", "--org", "acme")[0] == 0
    assert run("users", "create", "dev@acme.test", "--org", "acme", "--name", "Dev")[0] == 0
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-cli-secret-9999")
    code, out, _ = run(
        "providers",
        "create",
        "oa",
        "--org",
        "acme",
        "--type",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key-env",
        "UPSTREAM_KEY",
        "--json",
    )
    assert code == 0 and json.loads(out)["has_api_key"] is True and "sk-upstream-cli" not in out
    assert (
        run(
            "models",
            "create",
            "chat",
            "--org",
            "acme",
            "--provider",
            "oa",
            "--slug",
            "gpt-4o-mini",
            "--capability",
            "vision,tool_use",
            "--pricing",
            '{"input": 0.15}',
        )[0]
        == 0
    )
    code, out, err = run("keys", "create", "k1", "--org", "acme", "--model", "chat", "--json")
    created = json.loads(out)
    assert code == 0 and created["secret"].startswith("sk-odock-") and "shown only once" in err
    code, out, _ = run("keys", "list", "--org", "acme")
    assert code == 0 and "k1" in out and created["secret"] not in out and out.startswith("ID")
    code, out, _ = run("grants", "list", "k1", "--org", "acme", "--json")
    assert [m["name"] for m in json.loads(out)] == ["chat"]
    code, out, _ = run("keys", "rotate", "k1", "--org", "acme", "--json")
    rotated = json.loads(out)
    assert rotated["id"] == created["id"] and rotated["secret"] != created["secret"]
    code, out, _ = run("keys", "revoke", created["id"], "--json")
    assert json.loads(out)["revoked"] is True
    assert run("grants", "remove", "k1", "chat", "--org", "acme")[0] == 0
    assert run("models", "update", "chat", "--org", "acme", "--slug", "gpt-4o")[0] == 0
    code, out, _ = run("models", "list", "--json")
    assert json.loads(out)[0]["slug"] == "gpt-4o" and json.loads(out)[0]["capabilities"] == [
        "vision",
        "tool_use",
    ]
    assert run("providers", "update", "oa", "--org", "acme", "--disable")[0] == 0
    assert run("models", "delete", "chat", "--org", "acme")[0] == 0
    assert run("providers", "delete", "oa", "--org", "acme")[0] == 0
    code, out, _ = run("providers", "list")
    assert out.strip() == "(none)"
    code, out, _ = run("usage", "--group-by", "day", "--json")
    assert code == 0 and json.loads(out) == []


def test_errors_are_one_line_with_nonzero_exit(odock: object) -> None:
    """Failures print one `odock: error:` line on stderr and exit 1."""
    run = odock  # type: ignore[assignment]
    run("orgs", "create", "acme")
    cases = [
        ("orgs", "create", "acme"),
        ("teams", "list", "--org", "missing"),
        ("keys", "create", "k", "--org", "acme", "--type", "TEAM"),
        (
            "providers",
            "create",
            "p",
            "--org",
            "acme",
            "--type",
            "openai",
            "--base-url",
            "http://x/v1",
            "--api-key-env",
            "ODOCK_TEST_UNSET_VARIABLE",
        ),
        ("keys", "create", "k", "--org", "acme", "--expires-at", "2001-01-01T00:00:00Z"),
        ("models", "update", "nope", "--org", "acme", "--slug", "x"),
    ]
    for argv in cases:
        code, out, err = run(*argv)
        assert code == 1, argv
        assert err.startswith("odock: error: ") and err.count("\n") == 1, err
        assert out == ""


def test_apply_command(odock: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`odock apply FILE` creates the catalogue, prints generated secrets once, and is a no-op the second time."""
    run = odock  # type: ignore[assignment]
    monkeypatch.setenv("CLI_UPSTREAM", "sk-upstream-apply-0000")
    path = tmp_path / "c.yaml"
    path.write_text(
        "organisations: [{name: acme}]\n"
        "providers: [{organisation: acme, name: p, type: anthropic, base_url: 'http://127.0.0.1:9',"
        " api_key: '${CLI_UPSTREAM}'}]\n"
        "models: [{organisation: acme, name: claude, provider: p, slug: claude-x}]\n"
        "keys: [{organisation: acme, name: k, models: [claude]}]\n"
    )
    code, out, _ = run("apply", str(path))
    assert code == 0 and "created  key acme/k" in out and "sk-odock-" in out
    code, out, _ = run("apply", str(path))
    assert code == 0 and out.strip().startswith("no changes")
    path.write_text(
        "providers: [{organisation: acme, name: p, type: openai, base_url: 'http://x', api_key: literal}]\n"
    )
    code, _, err = run("apply", str(path))
    assert code == 1 and "inline secrets are refused" in err
