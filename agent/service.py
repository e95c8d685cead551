"""The `serpens.v1.Agent` servicer: the controller's hands on one node (DESIGN §4).

Every call changes the node under its lock, in a worker thread (compiling NFs and starting
instances block for milliseconds to a second), and answers with what the node now runs.
Errors are status codes whose message names the field or carries the compiler's text:
INVALID_ARGUMENT for a spec or NF the node refuses, NOT_FOUND for an SFC it does not run,
UNAVAILABLE when no pool process is free.
"""
from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from serpens.common.spec import SpecError, parse_sfc
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc
from serpens.runtime_cy.errors import NFBuildError, NFRefusedError

from .process_pool import PoolError

log = logging.getLogger(__name__)


def _handler(method):
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except SpecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except NFBuildError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"NF build: {e}")
        except NFRefusedError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"refused by the NF verifier: {e}")
        except PoolError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"process pool: {e}")
        except ValueError as e:  # e.g. more instances than the node's router has slots
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return wrapper


class AgentServicer(pb_grpc.AgentServicer):
    def __init__(self, node):
        self.node = node

    def _sfc(self, name: str) -> pb.AgentSFC:
        c = self.node.stats()["sfcs"][name]
        return pb.AgentSFC(name=name, generation=c["generation"], replicas=c["replicas"],
                           instances=c["instances"], rx=c["rx"], out=c["out"],
                           dropped=c["dropped"], held=c["held"])

    @_handler
    async def RunSFC(self, request, context):
        spec = parse_sfc(request.spec, allow_source=False)
        await asyncio.to_thread(self.node.apply_sfc, spec, dict(request.nf_sources),
                                request.replicas or None, request.generation)
        log.info("running sfc %s generation %d", spec.name, request.generation)
        return self._sfc(spec.name)

    @_handler
    async def StopSFC(self, request, context):
        if request.name not in self.node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"name: node {self.node.spec.name} runs no SFC {request.name!r}")
        await asyncio.to_thread(self.node.remove_sfc, request.name)
        log.info("stopped sfc %s", request.name)
        return pb.StopSFCResponse()

    @_handler
    async def ScaleSFC(self, request, context):
        if request.name not in self.node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"name: node {self.node.spec.name} runs no SFC {request.name!r}")
        await asyncio.to_thread(self.node.scale, request.name, request.replicas)
        return self._sfc(request.name)

    @_handler
    async def GetNode(self, request, context):
        st = self.node.stats()
        return pb.NodeStatus(
            name=st["node"], sfcs=[self._sfc(name) for name in st["sfcs"]],
            ports={name: pb.PortCounters(rx=c["rx"], tx=c["tx"], tx_failed=c["tx_failed"],
                                         unmatched=c["unmatched"], missed=c["missed"])
                   for name, c in st["ports"].items()})
