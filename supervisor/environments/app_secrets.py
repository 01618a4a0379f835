"""The secrets an app declares, the values given for them, and their masking.

``inf.yml`` lists ``secrets:`` and ``integrations:`` as ``{key, description,
optional}``. Values come from the host (``start(secrets=...)``, ``--secret``,
``--secrets-file``, ``--secrets-from-env``); only declared keys reach the app's
child, in its environment, and a required key without a value stops the start
before any child exists. Values never leave in status, metrics or errors, and
what a child prints is passed through ``SecretMask`` before it is logged or
handed to a caller, so an app that prints its API key does not leak it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingSecretError

MASK = "********"
MIN_MASKED_LENGTH = 4
"""Shorter values are not masked: replacing every "1" would garble the logs."""


@dataclass(frozen=True)
class DeclaredSecret:
    """A secret an app's ``inf.yml`` names; only declared secrets reach its children."""

    key: str
    description: str = ""
    optional: bool = False


def resolve_secrets(
    declared: Iterable[DeclaredSecret], given: Mapping[str, str], app: str
) -> dict[str, str]:
    """The values of the declared keys; ``MissingSecretError`` names every
    required key without a value (an empty value counts as none)."""
    values: dict[str, str] = {}
    missing: list[DeclaredSecret] = []
    for secret in declared:
        value = given.get(secret.key)
        if value:
            values[secret.key] = value
        elif not secret.optional:
            missing.append(secret)
    if missing:
        names = "; ".join(
            f"{s.key}" + (f" ({s.description})" if s.description else "") for s in missing
        )
        raise MissingSecretError(
            f"{app}: missing required secret(s): {names}. Give them with --secret KEY=VALUE, "
            "--secrets-file FILE, --secrets-from-env, or start(secrets=...)",
            missing=[{"key": s.key, "description": s.description} for s in missing],
        )
    return values


def read_secrets_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines in dotenv format (quotes, ``export``, comments)."""
    from dotenv import dotenv_values

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such secrets file")
    return {k: v for k, v in dotenv_values(file).items() if v is not None}


class SecretMask:
    """Replaces every secret value in a text by ``MASK``."""

    def __init__(self, values: Iterable[str]) -> None:
        # Longest first, so that a value containing another is masked whole.
        kept = sorted({v for v in values if len(v) >= MIN_MASKED_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
