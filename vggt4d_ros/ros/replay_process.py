"""The node process that ``vggt4d replay`` starts: command line, console log, liveness, stop by signal."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

__all__ = ["NodeProcess"]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when replay dies, so the node never outlives it (Linux)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class NodeProcess:
    """The node as a child process whose console output goes to ``log_path`` (a temporary file when ``None``,
    removed by :meth:`close` unless kept)."""

    def __init__(self, log_path: Optional[Path] = None) -> None:
        if log_path is not None:
            self.log_path: Optional[Path] = Path(log_path)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_is_temp = False
        else:
            fd, name = tempfile.mkstemp(prefix="vggt4d_replay_node_", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._log_is_temp = True
        self._log_file = None
        self.proc: Optional[subprocess.Popen] = None

    def start(self, cmd: Sequence[str], env: Mapping[str, str]) -> None:
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(list(cmd), env=dict(env), stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def exited(self) -> Optional[int]:
        """The exit status once the process has ended, else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def log_excerpt(self, lines: int = 6) -> str:
        """``": <last ERROR/FATAL lines>"`` of the node's log (or its last 2 lines), '' when there is none."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [ln for ln in text if "ERROR" in ln or "FATAL" in ln]
        chosen = errors[-lines:] if errors else text[-2:]
        return (": " + " | ".join(s.strip() for s in chosen)) if chosen else ""

    def stop(self) -> Optional[int]:
        """SIGINT, then SIGTERM, then SIGKILL until the process ends; returns its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                proc.send_signal(sig)
                try:
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    logger.warning("the node did not stop after %s within %.0f s", signal.Signals(sig).name, wait_s)
        return proc.returncode

    def close(self, keep_log: bool) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_is_temp and self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
