"""Secrets: declared in inf.yml, given by the host, seen by that app's child only,
and never shown: not in status, errors or logs, even when the app prints them."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from sup_helpers import make_supervisor

from supervisor import errors
from supervisor.environments.app_config import read_manifest
from supervisor.environments.app_secrets import (
    MASK,
    DeclaredSecret,
    SecretMask,
    read_secrets_file,
    resolve_secrets,
)
from supervisor.events import LogEvent
from supervisor.process.child_process import ChildProcess

APPS = Path(__file__).resolve().parent.parent / "apps"
SECRETS_APP = APPS / "secrets"
KEY = "sk-test-0123456789abcdef"


# -- declarations and values (pure) -------------------------------------------------


def test_manifest_lists_secrets_then_integrations() -> None:
    manifest = read_manifest(SECRETS_APP)
    assert manifest.secrets == (
        DeclaredSecret("SERVICE_API_KEY", "the key of the service the app calls", False),
        DeclaredSecret("OPTIONAL_TUNING", "an optional setting", True),
        DeclaredSecret("STORAGE_TOKEN", "the storage integration", True),
    )


def test_a_malformed_secrets_list_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "inf.yml").write_text("secrets:\n  - description: no key\n")
    with pytest.raises(ValueError, match=r"inf.yml: secrets\[0\]"):
        read_manifest(tmp_path)


def test_resolve_keeps_declared_keys_only_and_allows_optional_ones() -> None:
    declared = read_manifest(SECRETS_APP).secrets
    given = {"SERVICE_API_KEY": KEY, "OTHER": "x", "OPTIONAL_TUNING": ""}
    assert resolve_secrets(declared, given, "secrets") == {"SERVICE_API_KEY": KEY}


def test_a_missing_required_secret_names_key_and_description() -> None:
    declared = (DeclaredSecret("A_KEY", "the A service"), DeclaredSecret("B_KEY", "", True))
    with pytest.raises(errors.MissingSecretError) as caught:
        resolve_secrets(declared, {"B_KEY": "b"}, "demo")
    assert "A_KEY (the A service)" in caught.value.message
    assert "B_KEY" not in caught.value.message
    assert caught.value.to_dict()["missing"] == [{"key": "A_KEY", "description": "the A service"}]
    assert caught.value.type == "missing_secret"


def test_mask_hides_every_value_longest_first_and_leaves_short_ones() -> None:
    mask = SecretMask(["abcd", "abcdef", "xy"])
    assert mask("abcdef and abcd and xy") == f"{MASK} and {MASK} and xy"
    assert not SecretMask(["a", ""])
    assert SecretMask([])("text") == "text"


def test_secrets_file_is_dotenv(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text('# comment\nexport A_KEY="quoted value"\nB_KEY=plain\nEMPTY\n')
    assert read_secrets_file(path) == {"A_KEY": "quoted value", "B_KEY": "plain"}
    with pytest.raises(FileNotFoundError):
        read_secrets_file(tmp_path / "missing.env")


# -- through the supervisor -----------------------------------------------------------

pytestmark_processes = pytest.mark.usefixtures("no_leftover_processes")


@pytest.mark.anyio
@pytestmark_processes
async def test_the_child_gets_declared_secrets_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDECLARED_SECRET", "host-value")
    async with make_supervisor(pool_size=0) as sup:
        app = await sup.start(
            SECRETS_APP, secrets={"SERVICE_API_KEY": KEY, "UNDECLARED_SECRET": "given"}
        )
        output = await app.run({})
        assert output == {"key_length": len(KEY), "present": ["SERVICE_API_KEY"]}
        assert KEY not in json.dumps(sup.status(), default=str)


@pytest.mark.anyio
@pytestmark_processes
async def test_optional_and_integration_secrets_reach_the_child_when_given() -> None:
    given = {"SERVICE_API_KEY": KEY, "OPTIONAL_TUNING": "fast", "STORAGE_TOKEN": "tok-1234"}
    async with make_supervisor(pool_size=1) as sup:  # through a pooled child too
        app = await sup.start(SECRETS_APP, secrets=given)
        output = await app.run({})
    assert output["present"] == ["SERVICE_API_KEY", "OPTIONAL_TUNING", "STORAGE_TOKEN"]


@pytest.mark.anyio
@pytestmark_processes
async def test_a_missing_secret_fails_before_any_child_starts(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    async with make_supervisor(pool_size=0) as sup:
        with pytest.raises(errors.MissingSecretError, match="SERVICE_API_KEY"):
            await sup.start(
                SECRETS_APP,
                secrets={"OPTIONAL_TUNING": "x"},
                env={"SECRETS_APP_IMPORTED": str(marker)},
            )
        assert sup.apps == {}
    assert not marker.exists()


@pytest.mark.anyio
@pytestmark_processes
@pytest.mark.parametrize("pool_size", [0, 1])
async def test_printed_and_raised_secret_values_are_masked(
    pool_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events = []
    async with make_supervisor(pool_size=pool_size) as sup:
        app = await sup.start(SECRETS_APP, secrets={"SERVICE_API_KEY": KEY})
        with pytest.raises(errors.AppExceptionError) as caught:
            async for event in app.stream({"leak": True}):
                events.append(event)
        status = json.dumps(sup.status(), default=str)
    logs = [e.message for e in events if isinstance(e, LogEvent)]
    assert any(f"using key {MASK}" in line for line in logs), logs
    assert any(f"stderr key {MASK}" in line for line in logs), logs
    error = json.dumps(caught.value.to_dict())
    assert f"refused key {MASK}" in error
    for text in (*logs, error, status, caplog.text):
        assert KEY not in text


@pytest.mark.anyio
@pytestmark_processes
async def test_what_a_child_writes_to_its_raw_stderr_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its original stderr (a fatal report before the runtime captures output)."""
    caplog.set_level(logging.DEBUG)
    script = f"import sys; sys.stderr.write('fatal: key {KEY} rejected\\n')"
    process = await ChildProcess.spawn(
        [sys.executable, "-c", script], env=dict(os.environ), cwd=".", name="raw"
    )
    for fd in process.take_protocol_fds():
        os.close(fd)
    process.mask = SecretMask([KEY])
    await process.read_stderr()
    await process.wait()
    process.close_pipes()
    assert list(process.stderr_tail) == [f"fatal: key {MASK} rejected"]
    assert KEY not in caplog.text
