"""A real etcd for tests: one member on loopback, free ports, its own data dir under /tmp.

`EtcdServer` starts Debian's /usr/bin/etcd, polls its /health (never a fixed sleep), and can be
killed and started again on the same ports and data dir. It speaks TLS and accepts only
clients with a certificate of the test CA (`pki()`, one per test session, as `serpens up`
makes one per cluster); `client_identity()` is the one tests connect with. `PartitionProxy` sits between one
client and etcd so a test can cut that client off (a partition: new connections are accepted
and then left silent, like a black hole) while other clients still reach etcd.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

from serpens.common.pki import CA, Identity

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


LOCAL = ("127.0.0.1", "localhost", "::1")


@functools.cache
def pki() -> CA:
    """The test session's CA (a directory under /tmp, removed at exit)."""
    directory = tempfile.mkdtemp(prefix="serpens-pki-", dir="/tmp")
    atexit.register(shutil.rmtree, directory, True)
    return CA.create(directory, "serpens-test-ca")


@functools.cache
def identity(name: str, role: str, hosts: tuple[str, ...] = LOCAL) -> Identity:
    """A certificate of the test CA for `name` with `role`, valid as a server on `hosts`
    (each set of hosts in its own directory: one name may be issued for several)."""
    out = os.path.join(pki().dir, "-".join(hosts).replace(":", "_"))
    return pki().issue(name, role, (*LOCAL, *hosts), out_dir=out)


def client_identity() -> Identity:
    """What the controller, agents and tests present to etcd and to each other."""
    return identity("serpens-controller", "controller")


def tls_args(name: str, role: str, hosts: tuple[str, ...] = LOCAL) -> list[str]:
    """serpens-controller / serpens-agent flags for that identity."""
    i = identity(name, role, hosts)
    return ["--ca", i.ca, "--cert", i.cert, "--key", i.key]


def secure_channel(address: str, who: Identity):
    """A blocking channel to `address` presenting `who`'s certificate."""
    import grpc

    from serpens.common.rpc import MESSAGE_OPTIONS, channel_credentials
    return grpc.secure_channel(address, channel_credentials(who), options=MESSAGE_OPTIONS)


@functools.cache
def serpensctl_config(name: str = "admin", role: str = "admin") -> str:
    """A serpensctl config whose current context is that user (tests give --server)."""
    from serpens.cli import config
    i = identity(name, role)
    path = os.path.join(pki().dir, f"config-{name}")
    config.set_context(path, {"name": name, "server": "127.0.0.1:50051", "ca": i.ca,
                              "cert": i.cert, "key": i.key})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, host: str = "127.0.0.1", tls: bool = True):
        self.host, self.tls = host, tls
        self.base_dir = tempfile.mkdtemp(prefix="serpens-etcd-", dir="/tmp")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_path = os.path.join(self.base_dir, "etcd.log")
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def start(self, ready_within: float = 10.0) -> EtcdServer:
        client, peer = self.url, f"http://{self.host}:{self.peer_port}"
        server = identity("etcd", "etcd", (self.host,))
        security = ["--cert-file", server.cert, "--key-file", server.key,
                    "--trusted-ca-file", server.ca, "--client-cert-auth"] if self.tls else []
        # Short raft timers: a one-member cluster elects itself in ~0.1 s instead of ~1 s.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "test", "--data-dir", self.data_dir,
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"test={peer}",
                 "--heartbeat-interval", "10", "--election-timeout", "100",
                 *security, "--logger", "zap", "--log-level", "error"],
                stdout=log, stderr=log)
        tls = None
        if self.tls:
            tls = ssl.create_default_context(cafile=server.ca)
            tls.load_cert_chain(client_identity().cert, client_identity().key)
        end = time.monotonic() + ready_within
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                with open(self.log_path) as log:
                    tail = log.read()[-2000:]
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=0.5,
                                            context=tls) as r:
                    if json.load(r).get("health") == "true":
                        return self
            except OSError:
                pass
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"etcd not healthy within {ready_within}s")

    def kill(self) -> None:
        """SIGKILL by PID (a crash; etcd's WAL keeps every committed write) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_etcd(attempts: int = 3, host: str = "127.0.0.1", tls: bool = True) -> EtcdServer:
    """A started server on `host` (plain text if not `tls`); picks new ports if another
    process grabbed ours meanwhile."""
    for attempt in range(attempts):
        server = EtcdServer(host, tls)
        try:
            return server.start()
        except RuntimeError:
            server.destroy()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class PartitionProxy:
    """TCP proxy on loopback in front of `target` ("host:port")."""

    def __init__(self, target: str):
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._writers: set[asyncio.StreamWriter] = set()
        self._partitioned = False
        self._server: asyncio.Server | None = None
        self.endpoint = ""

    async def start(self) -> PartitionProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.endpoint = "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writers.add(writer)
        if self._partitioned:
            return  # held open, never answered, until heal()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _drop_all(self):
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def partition(self):
        self._partitioned = True
        self._drop_all()

    def heal(self):
        # Close the silent connections so the client's reconnect is not stuck on one.
        self._partitioned = False
        self._drop_all()

    async def close(self):
        self._drop_all()
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(scope="module")
def etcd():
    """A real etcd on loopback for a test module (import this fixture by name)."""
    server = start_etcd()
    yield server
    server.destroy()
