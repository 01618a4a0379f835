"""Where the command line's logs go: stderr, as text for people or JSON lines for machines.

stdout is kept for results (``appvisor run`` prints only its output there), so
every logger, uvicorn's included, writes to stderr through the root logger.

An app's own output (its prints, logs and progress while it is imported and
set up) is logged by ``supervisor.app.NAME`` and shown at the default level of
every command: nine silent seconds of model loading look like a hang. In text
it reads ``NAME | message``. Progress reports carry their figures on the
record (``log_progress``); on a terminal they draw a progress bar per app and
phase (tqdm) instead of a line each.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from tqdm import tqdm

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
APP_LOGGER = "supervisor.app"
"""The parent of each app's logger (``supervisor.app.NAME``)."""


class ProgressReport(Protocol):
    @property
    def fraction(self) -> float | None: ...
    @property
    def current(self) -> float | None: ...
    @property
    def total(self) -> float | None: ...
    @property
    def message(self) -> str | None: ...


def log_progress(logger: logging.Logger, phase: str, report: ProgressReport) -> None:
    """Log a progress report, its figures on the record for a bar to draw."""
    figures = {
        "phase": phase,
        "fraction": report.fraction,
        "current": report.current,
        "total": report.total,
        "message": report.message,
    }
    percent = "" if report.fraction is None else f" {report.fraction:.0%}"
    text = f"{phase} progress{percent} {report.message or ''}".rstrip()
    logger.info("%s", text, extra={"progress": figures})


def app_name(record: logging.LogRecord) -> str | None:
    """The app a record is the output of, if any."""
    if record.name.startswith(APP_LOGGER + "."):
        return record.name[len(APP_LOGGER) + 1 :]
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        app = app_name(record)
        if app is not None:
            entry["app"] = app
        for key in ("progress", "request"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``; an app's output as ``time NAME | message``."""

    def __init__(self, timestamps: bool = True) -> None:
        prefix = "%(asctime)s " if timestamps else ""
        super().__init__(prefix + "%(levelname)-7s %(name)s: %(message)s")
        self._app = logging.Formatter(prefix + "%(app)s | %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        app = app_name(record)
        if app is None or record.levelno > logging.INFO:
            return super().format(record)
        record.app = app
        return self._app.format(record)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr; on a terminal, progress records move a bar instead of adding lines."""

    def __init__(self, stream: IO[str], bars: bool) -> None:
        super().__init__(stream)
        self.draw_bars = bars and stream.isatty()
        self.bars: dict[tuple[str, str], tqdm[Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        figures = getattr(record, "progress", None)
        if self.draw_bars and isinstance(figures, dict):
            self.move_bar(record.name.rsplit(".", 1)[-1], figures)
            return
        if self.draw_bars:  # print above any bar (ours or another's), not through it
            from tqdm import tqdm  # only a terminal draws bars

            tqdm.write(self.format(record), file=self.stream)
            return
        super().emit(record)

    def move_bar(self, app: str, figures: dict[str, Any]) -> None:
        key = (app, str(figures.get("phase")))
        bar = self.bars.get(key)
        if bar is None:
            from tqdm import tqdm

            bar = self.bars[key] = tqdm(
                total=100,
                desc=f"{app} {key[1]}",
                file=self.stream,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}",
                leave=True,
            )
        fraction = figures.get("fraction")
        if fraction is not None:
            bar.n = round(100 * min(max(float(fraction), 0.0), 1.0))
        bar.set_postfix_str(figures.get("message") or "", refresh=False)
        bar.refresh()
        if fraction is not None and fraction >= 1:
            bar.close()
            del self.bars[key]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        super().close()


def configure_logging(
    fmt: LogFormat = "text",
    level: str | int = "INFO",
    *,
    timestamps: bool = True,
    app_output: bool = True,
) -> None:
    """Log to stderr; ``app_output`` shows each app's output even below ``level``."""
    handler = ConsoleHandler(sys.stderr, bars=fmt == "text")
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(timestamps))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    apps = logging.getLogger(APP_LOGGER)
    apps.setLevel(min(logging.INFO, root.level) if app_output else logging.NOTSET)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
