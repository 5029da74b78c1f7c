"""Start the system's long-running jobs as child processes, the way an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


class ChildProcess:
    """A ``fraud`` subcommand in its own process, logged to a file, stopped with SIGINT then SIGKILL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fraud", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; its log ends:\n{tail}")

    def interrupt(self) -> None:
        """Ask it to stop (SIGINT) without waiting: stop several at once, then ``stop`` each."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    poll_s: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll until ``condition`` holds; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
