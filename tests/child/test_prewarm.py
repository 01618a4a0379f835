"""What a pooled child pays before its hello (``python -m child --prewarm``)."""

from __future__ import annotations

import json
import subprocess
import sys

from child.__main__ import _parse

PROBE = """
import json
from child import metadata
from protocol import messages
before = (len(metadata._classes), len(messages._FIELDS))
from child.prewarm import prewarm
prewarm()
after = (len(metadata._classes), len(messages._FIELDS))
print(json.dumps([before, after, len(messages.MESSAGE_TYPES)]))
"""


def test_prewarm_builds_what_a_start_would_build_first() -> None:
    # A fresh interpreter: in this one, other tests have filled the caches already.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, types = json.loads(out.stdout)
    assert before == [0, 0]
    assert after == [1, types]


def test_the_command_line_takes_prewarm_as_a_flag() -> None:
    assert _parse(["--prewarm", "/app"]) == ({"--prewarm": ""}, "/app")
    assert _parse(["--preload", "numpy", "--prewarm"]) == (
        {"--preload": "numpy", "--prewarm": ""},
        None,
    )
    assert _parse(["--shared-memory", "3,4", "/app"]) == ({"--shared-memory": "3,4"}, "/app")
    assert _parse([]) == ({}, None)
