"""``--secret``, ``--secrets-file`` and ``--secrets-from-env`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from http_helpers import APPS, cli, running

from supervisor.cli import ExitCode

APP = str(APPS / "secrets")
KEY = "sk-cli-0123456789"


def test_each_source_gives_the_declared_secret(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(f"SERVICE_API_KEY={KEY}\nSTORAGE_TOKEN=from-file\n")
    by_file = cli("run", APP, "--secrets-file", str(env_file))
    assert by_file.returncode == ExitCode.OK, by_file.stderr
    assert json.loads(by_file.stdout)["present"] == ["SERVICE_API_KEY", "STORAGE_TOKEN"]
    by_option = cli("run", APP, "--secret", f"SERVICE_API_KEY={KEY}")
    assert json.loads(by_option.stdout)["key_length"] == len(KEY)
    by_env = cli("run", APP, "--secrets-from-env", env={"SERVICE_API_KEY": KEY})
    assert json.loads(by_env.stdout)["key_length"] == len(KEY)
    # Without --secrets-from-env the host's variable is not used.
    not_by_env = cli("run", APP, env={"SERVICE_API_KEY": KEY})
    assert not_by_env.returncode == ExitCode.USAGE


def test_a_missing_secret_is_a_usage_error_naming_it() -> None:
    result = cli("run", APP, "--secret", "OPTIONAL_TUNING=abcdef")
    assert result.returncode == ExitCode.USAGE
    assert "missing_secret" in result.stderr
    assert "SERVICE_API_KEY (the key of the service the app calls)" in result.stderr
    assert result.stdout == ""


def test_printed_secrets_are_masked_on_stderr() -> None:
    result = cli("run", APP, "--secret", f"SERVICE_API_KEY={KEY}", "--input", '{"leak": true}')
    assert result.returncode == ExitCode.APP_ERROR
    assert "using key ********" in result.stderr
    assert KEY not in result.stderr


def test_malformed_secret_options_are_usage_errors(tmp_path: Path) -> None:
    assert cli("run", APP, "--secret", "NO_EQUALS").returncode == ExitCode.USAGE
    missing = cli("run", APP, "--secrets-file", str(tmp_path / "none.env"))
    assert missing.returncode == ExitCode.USAGE
    assert "no such secrets file" in missing.stderr


def test_serve_keeps_secret_values_out_of_health_metrics_errors_and_logs(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(f"SERVICE_API_KEY={KEY}\n")
    log = tmp_path / "serve.log"
    with running([APP, "--secrets-file", str(env_file), "--log-level", "debug"], log=log) as server:
        assert server.client.post("/run", json={"input": {}}).json()["output"]["key_length"] == len(
            KEY
        )
        failed = server.client.post("/run", json={"input": {"leak": True}})
        assert failed.status_code == 500
        assert "refused key ********" in failed.text
        streamed = server.client.post("/run", json={"input": {"leak": True}, "stream": True})
        assert "using key ********" in streamed.text
        texts = [failed.text, streamed.text]
        texts += [server.client.get(p).text for p in ("/health", "/metrics", "/openapi.json")]
    texts.append(log.read_text())
    for text in texts:
        assert KEY not in text
