"""`transformers serve` on the CPU on a free port: the tests' and the endpoint benchmark's server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path


@contextlib.contextmanager
def served(model_dir: str | Path, log_path: Path, wait_until):
    """The server's OpenAI base URL while the block runs (``wait_until``: tests/waiting.py's,
    passed in as tests/seaweedfs.py takes it). Its model is asked for by ``str(model_dir)``; a
    server that exits: RuntimeError with its log's end (TimeoutError if it never answers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    # The console script installed beside this Python; no update check over the network.
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1"})

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(answers, 180, "transformers serve to answer", interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
