"""The control plane's programs as subprocesses for tests: `serpens-controller` (Controller),
`serpens-agent` (Agent) and `serpens-gateway` (Gateway), each on a free port (loopback, or an
address in a network namespace) with the test CA's certificates, and the waits and checks
the tests share."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serpens.cli.cluster import local_node
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc

from .etcd import client_identity, free_port, identity, secure_channel, tls_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
FW_MON_NAT = open(os.path.join(ROOT, "examples", "fw-mon-nat.yaml")).read()
NODE = local_node("local", 5000, pool=2)  # slow enough to leave the CPUs to the rest


def sfc_spec(name, nfs, chain):
    return json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": name},
                       "spec": {"nfs": nfs, "chain": chain}})


class Controller:
    """`serpens-controller` in a subprocess; ready once its health check says SERVING."""

    def __init__(self, etcd_endpoint, etcd_timeout=2.0, args=(), log_level="warning",
                 user=("admin", "admin")):
        """`user`: (name, role) of the certificate `channel` and `stub` call with."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill up
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "serpens-controller"), "--etcd", f"https://{etcd_endpoint}",
             "--listen", self.address, "--etcd-timeout", str(etcd_timeout),
             "--log-level", log_level, *tls_args("serpens-controller", "controller"), *args],
            stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.channel = secure_channel(self.address, identity(*user))
        health = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited: {self.output()}")
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                break
            except grpc.RpcError:
                if time.monotonic() > end:
                    self.stop()
                    raise
                time.sleep(0.05)
        self.stub = serpens_pb2_grpc.SerpensStub(self.channel)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class _Served:
    """A served program in a subprocess (self.proc, self.log, self.channel)."""

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR2)  # its threads' stacks into the output
            time.sleep(1)
            self.proc.kill()
            return self.proc.wait()


class Agent(_Served):
    """`serpens-agent` in a subprocess; ready once its Agent service answers."""

    def __init__(self, etcd_endpoint, node_path, host="127.0.0.1", netns=""):
        """`netns`: run it in that network namespace, serving on `host` there."""
        self.address = f"{host}:{free_port()}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            (["ip", "netns", "exec", netns] if netns else []) +
            [os.path.join(BIN, "serpens-agent"), "--node", node_path, "--etcd", etcd_endpoint,
             "--listen", self.address, "--report-s", "0.2", "--ttl", "2",
             *tls_args("serpens-agent", "agent", (host,))],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        # the Agent service answers only the controller's identity
        self.channel = secure_channel(self.address, client_identity())
        self.stub = serpens_pb2_grpc.AgentStub(self.channel)
        wait_until(lambda: self._answers(), 60, self.output)

    def _answers(self):
        assert self.proc.poll() is None, self.output()
        try:
            self.stub.GetNode(pb.GetNodeRequest(), timeout=0.5)
            return True
        except grpc.RpcError:
            return False

    def sfcs(self) -> dict:
        return {s.name: s for s in self.stub.GetNode(pb.GetNodeRequest(), timeout=5).sfcs}


class Gateway(_Served):
    """`serpens-gateway` in a subprocess; ready once its Gateway service answers."""

    def __init__(self, etcd_endpoint, config_path, args=(), host="127.0.0.1", netns=""):
        """`netns`: run it in that network namespace, serving on `host` there."""
        self.address = f"{host}:{free_port()}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            (["ip", "netns", "exec", netns] if netns else []) +
            [os.path.join(BIN, "serpens-gateway"), "--config", config_path,
             "--etcd", etcd_endpoint, "--listen", self.address, "--report-s", "0.2",
             "--ttl", "2", *tls_args("serpens-gateway", "gateway", (host,)), *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.channel = secure_channel(self.address, client_identity())
        self.stub = serpens_pb2_grpc.GatewayStub(self.channel)
        wait_until(lambda: self._answers(), 60, self.output)

    def _answers(self):
        assert self.proc.poll() is None, self.output()
        try:
            self.status(timeout=0.5)
            return True
        except grpc.RpcError:
            return False

    def status(self, timeout=5):
        return self.stub.GetGateway(pb.GetGatewayRequest(), timeout=timeout)

    def kill(self):
        """SIGKILL (a crash: no deregistration; its record goes with its lease)."""
        self.channel.close()
        self.proc.kill()
        self.proc.wait()


def wait_until(predicate, timeout, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, explain()
        time.sleep(0.05)


def status(stub, name):
    return stub.GetSFC(pb.GetSFCRequest(name=name), timeout=5).status


def check_health_and_reflection(channel, service_name):
    """What `grpcurl list` and `grpcurl describe` need: health SERVING, reflection."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", service_name):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {service_name, "grpc.health.v1.Health"} <= names
    replies = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol=service_name)]), timeout=5))
    assert replies[0].file_descriptor_response.file_descriptor_proto  # grpcurl can describe it
