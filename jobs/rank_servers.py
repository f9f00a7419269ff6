"""The warm processes a local study's runs are forked from (``hpml_core/rank_server.py`` says
why): one without DeepSpeed and one with it, for the ZeRO modes (a fresh rank imports it only
there), each started when a run first needs it and stopped with the submission that started
it. The tests fork their launches from a pair of their own (``tests/conftest.py``).

Only processes cross from here into the engine: this module starts its server and hands back
the client's command line, and imports nothing of torch's.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# How long a server may take to import what a rank imports (some 4 s on an idle 2-core machine).
START_TIMEOUT_S = 300


class RankServerError(RuntimeError):
    """No server could be started; the message says why in one line."""


class RankServer:
    """One server, started by ``ensure_started`` and gone with ``stop`` (or with the process that
    started it: it watches for that)."""

    def __init__(self, deepspeed: bool):
        self.deepspeed = deepspeed
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None

    def ensure_started(self, env: dict[str, str], cwd: Path) -> str:
        """Start the server (with the environment the launches would import under) if it is not
        running, wait until it listens, and hand back its socket's path."""
        if self.folder is None:  # a short path: a socket's may not exceed 107 bytes
            self.folder = Path(tempfile.mkdtemp(prefix="hpml-ranks-"))
        path, log_path = str(self.folder / "socket"), self.folder / "server.log"
        if self.process is None or self.process.poll() is not None:
            if os.path.exists(path):
                os.unlink(path)
            ready_read, ready_write = os.pipe()
            command = [sys.executable, "-m", "hpml_core.rank_server", "serve", path, str(ready_write),
                       *(["--deepspeed"] if self.deepspeed else [])]
            with log_path.open("a") as log:
                # In a session of its own, as each run's processes were before it: a terminal's
                # Ctrl-C reaches them only as hpml submit passes it on (a checkpoint, then STOPPED).
                self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=log, pass_fds=[ready_write], start_new_session=True)
            os.close(ready_write)
            with os.fdopen(ready_read, "rb") as ready:
                said = select.select([ready], [], [], START_TIMEOUT_S)[0] and ready.readline()
            if said != b"ready\n":
                self.process.kill()
                self.process.wait()
                said = log_path.read_text(errors="replace").strip().splitlines() or ["no output"]
                raise RankServerError(f"hpml's rank server did not start: {said[-1]}")
        return path

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class RankServers:
    """The pair, by whether the launch's ranks import DeepSpeed."""

    def __init__(self):
        self.servers = {deepspeed: RankServer(deepspeed) for deepspeed in (False, True)}
        self.broken: dict[bool, str] = {}  # why a server could not start: not tried again

    def launch_command(self, deepspeed: bool, nproc: int, target: list[str], env: dict[str, str],
                       cwd: Path) -> list[str]:
        """The client's command line: ``python -m hpml_core.rank_server launch SOCKET NPROC TARGET...``;
        RankServerError where the server could not start (now or before)."""
        if deepspeed not in self.broken:
            try:
                socket_path = self.servers[deepspeed].ensure_started(env, cwd)
                return [sys.executable, "-m", "hpml_core.rank_server", "launch", socket_path, str(nproc), *target]
            except OSError as error:  # no folder for its socket, no process
                self.broken[deepspeed] = f"hpml's rank server did not start: {error}"
            except RankServerError as error:
                self.broken[deepspeed] = str(error)
        raise RankServerError(self.broken[deepspeed])

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> RankServers:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
