"""The study's stages: each one runs once, records what it measured, and is skipped when rerun.

A stage's record (``<study dir>/stages/<name>.json``) holds its key, its seconds and its result.
The key is a hash of the stage's own inputs and of the key of the stage before it, so a change
anywhere reruns that stage and every later one, and nothing else. A record is written atomically
once the stage finished; a study killed inside a stage starts that stage again (the stages that
write large files, extraction and streaming, resume inside their files).

While a stage runs, ``<name>.running.json`` keeps its key and the seconds spent on it so far
(rewritten every ``HEARTBEAT`` seconds). A stage started again after a kill adds the seconds of
the killed attempts to its own, so a stage's time is what it cost, whatever interrupted it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from apmae.common.atomic import atomic_write_text
from apmae.demo.console import clock

HEARTBEAT = 5.0  # seconds between two writes of a running stage's time


def stage_key(previous: str, inputs: Any) -> str:
    """The key of a stage whose inputs are ``inputs`` (JSON-able) and whose predecessor's key is ``previous``."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()[:16]


@dataclass
class StageBook:
    """The records of a study's finished stages, and the clock of this run."""

    folder: Path
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds (this run's, or the record's)
    reused: list[str] = field(default_factory=list)
    key: str = "study"  # the key of the last stage run or reused

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    def path(self, name: str) -> Path:
        return self.folder / "stages" / f"{name}.json"

    def finished(self, name: str, key: str) -> dict[str, Any] | None:
        """The record of ``name`` when it finished under ``key`` (else None: run it)."""
        return _record(self.path(name), key)

    def run(self, name: str, inputs: Any, stage: Callable[[], dict[str, Any]], *, announce: bool = True
            ) -> dict[str, Any]:
        """``stage()``'s result, from its record when it finished under the same key, else by running it."""
        key = stage_key(self.key, inputs)
        record = self.finished(name, key)
        if record is not None:
            self.key = key
            self.seconds[name] = float(record["seconds"])
            self.reused.append(name)
            if announce:
                print(f"[study] {name}: finished before ({clock(record['seconds'])}), reused", flush=True)
            return record["result"]
        before, attempts = self._killed_attempts(name, key)
        if announce:
            again = (f" (again: {attempts} attempt{'s' * (attempts > 1)} stopped after {clock(before)})"
                     if attempts else "")
            print(f"[study] {name} ...{again}", flush=True)
        self.path(name).parent.mkdir(parents=True, exist_ok=True)
        start, done = time.perf_counter(), threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT):
                self._write_running(name, key, before + time.perf_counter() - start, attempts + 1)

        self._write_running(name, key, before, attempts + 1)
        heart = threading.Thread(target=beat, name=f"study-{name}-clock", daemon=True)
        heart.start()
        try:
            result = stage()
        finally:
            done.set()
            heart.join()
        seconds = before + time.perf_counter() - start
        result = json.loads(json.dumps(result, default=_plain))  # plain JSON values: what a rerun reads back
        atomic_write_text(self.path(name), json.dumps(
            {"key": key, "seconds": seconds, "attempts": attempts + 1, "seconds_before_restart": before,
             "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(), "result": result},
            indent=1) + "\n")
        self._running(name).unlink(missing_ok=True)
        self.key = key
        self.seconds[name] = seconds
        if announce:
            print(f"[study] {name}: {clock(seconds)}", flush=True)
        return result

    def _running(self, name: str) -> Path:
        return self.folder / "stages" / f"{name}.running.json"

    def _write_running(self, name: str, key: str, seconds: float, attempts: int) -> None:
        atomic_write_text(self._running(name), json.dumps({"key": key, "seconds": seconds, "attempts": attempts}))

    def _killed_attempts(self, name: str, key: str) -> tuple[float, int]:
        """Seconds spent on attempts of this stage (same key) that were killed, and how many there were."""
        running = _record(self._running(name), key)
        if running is None:
            return 0.0, 0
        return float(running.get("seconds", 0.0)), int(running.get("attempts", 0))

    def times_line(self) -> str:
        parts = [f"{name} {clock(s)}{' (before)' if name in self.reused else ''}" for name, s in self.seconds.items()]
        return f"Stage times: {' | '.join(parts)} | total {clock(sum(self.seconds.values()))}"


def _record(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` when it is one written under ``key``; None when missing, damaged or another key's."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, paths and sets as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, set, frozenset, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")

