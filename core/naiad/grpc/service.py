"""Triton's ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` over the data plane.

Every RPC parses its message, calls the same :class:`~naiad.dataplane.DataPlane` as HTTP and
builds the answer; it fails with a :class:`~naiad.errors.NaiadError`, which the transport turns
into the gRPC status of :data:`naiad.errors.STATUS` (the one table every transport uses) and the
error's message. The bidirectional ``ModelStreamInfer`` lives in :mod:`naiad.grpc.stream`.

Nothing here knows the transport: both gRPC servers (grpcio's, :mod:`naiad.grpc.server`, and
naiad's lean HTTP/2 front, :mod:`naiad.grpc.front`) call these methods with the request message
and a *context* that has ``invocation_metadata()`` (the request's headers as ``(key, value)``
pairs) and, for the stream, ``async write(message)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format

from .. import logs
from ..dataplane import DataPlane
from ..errors import InternalError, InvalidArgument, NaiadError, Unsupported
from ..forwarding import forward_headers
from ..inference import parse_model_version
from ..plans import PlanCache
from ..plans import keep as keep_plan
from . import codec, health_pb2, stream
from . import grpc_service_pb2 as pb
from .options import GrpcOptions, check_restricted

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]


def rpc(method: Handler) -> Handler:
    """A unary RPC: the restricted-protocol check; any failure is a :class:`NaiadError`."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            if self.options.restricted:
                check_restricted(self.options, name, context)
            return await method(self, request, context)
        except NaiadError:
            raise
        except Exception as exc:  # the server keeps serving whatever a handler did
            log.error("unhandled error in gRPC %s", name, exc_info=exc)
            raise InternalError(f"internal error: {type(exc).__name__}: {exc}") from exc

    return wrapper


class InferenceService:
    """The servicer of ``inference.GRPCInferenceService`` (registered by :mod:`.server`)."""

    def __init__(self, dataplane: DataPlane, options: GrpcOptions | None = None) -> None:
        self.dp = dataplane
        self.options = options or GrpcOptions()
        #: ModelInfer's plans per model version (:class:`codec.RawPlan`; lean front only)
        self.plans = PlanCache()

    # ---- health and metadata -------------------------------------------------------------------

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dp.health(ready=False))

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.health(ready=True))

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        version = parse_model_version(request.version)
        return pb.ModelReadyResponse(ready=await self.dp.model_ready_checked(request.name, version))

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.dp.server_metadata())

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        meta = self.dp.model_metadata(request.name, parse_model_version(request.version))
        Tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[Tensor(**t) for t in meta["inputs"]],
            outputs=[Tensor(**t) for t in meta["outputs"]],
        )

    # ---- inference -----------------------------------------------------------------------------

    @rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """``request``: the message, or (from the lean front) a :class:`codec.SplitRequest`,
        answered with the serialized response (:class:`codec.WireMessage`)."""
        dp = self.dp
        raw = split = None
        encode: Any = codec.encode_infer_response
        if isinstance(request, codec.SplitRequest):
            split, request, raw = request, request.msg, request.raw
            encode = codec.encode_infer_response_wire
        version = parse_model_version(request.model_version)
        mv = dp.resolve(request.model_name, version)
        if mv.decoupled:
            raise Unsupported(
                "ModelInfer RPC doesn't support models with decoupled transaction policy"
            )
        key = split.key if split is not None and raw is not None else None
        plans: dict[bytes, Any] | None = None
        plan: Any = None
        if key is not None and raw is not None:
            plans = self.plans.of(mv)
            plan = plans.get(key)
            if plan is not None and len(plan.specs) != len(raw):
                plan = None
        costly = plan.costly(raw) if plan is not None else codec.costly_request(request, raw)
        if costly:
            plans = plan = None  # a big BYTES input is split on a worker thread, not planned
        lease = dp.shm.lease()
        try:
            if plan is not None and raw is not None:
                req = plan.build_raw(raw)
            elif costly:
                req, _ = await asyncio.to_thread(
                    codec.parse_infer_request, request, lease.read, raw
                )
            else:
                req, _ = codec.parse_infer_request(request, lease.read, raw)
                if plans is not None and split is not None:
                    plan = codec.plan_of(split, req)
            if self.options.forward_pattern is not None:
                metadata = context.invocation_metadata() or ()
                forward_headers(req, metadata, self.options.forward_pattern)
            lease.reserve(req.outputs)
            sig = mv.signature
            validated = plan is not None and plan.validated(sig)
            response = await dp.infer(req, mv, validated=validated)
            if plan is not None and not validated:
                plan.accepted(sig, req)
                if plans is not None and key is not None and key not in plans:
                    keep_plan(plans, key, plan)
            req.inputs = {}  # the answer is encoded without them: free them first
            if codec.costly_response(response):
                return await asyncio.to_thread(encode, req, response, lease.write)
            return encode(req, response, lease.write)
        finally:
            lease.release()

    async def ModelStreamInfer(self, requests: Any, context: Any) -> None:
        await stream.serve_stream(self, requests, context)

    # ---- configuration and statistics ----------------------------------------------------------

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        version = parse_model_version(request.version)
        return pb.ModelConfigResponse(config=self.dp.model_config_message(request.name, version))

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        stats = self.dp.statistics(request.name, parse_model_version(request.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # ---- model repository ----------------------------------------------------------------------

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        _check_repository_name(request.repository_name)
        Index = pb.RepositoryIndexResponse.ModelIndex
        entries = self.dp.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[Index(**e) for e in entries])

    @rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Any:
        _check_repository_name(request.repository_name)
        config = None
        files: dict[str, bytes] = {}
        for key, p in request.parameters.items():
            which = p.WhichOneof("parameter_choice")
            if key == "config":
                if which != "string_param":
                    raise InvalidArgument(
                        "invalid value type for load parameter 'config', expected string_param."
                    )
                config = p.string_param
            elif key.startswith("file:"):
                if which != "bytes_param":
                    raise InvalidArgument(
                        f"invalid value type for load parameter '{key}', expected bytes_param."
                    )
                files[key[5:]] = p.bytes_param
            else:
                raise InvalidArgument(f"unrecognized load parameter '{key}'.")
        await self.dp.load_model(request.model_name, config, files or None)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Any:
        _check_repository_name(request.repository_name)
        dependents = False
        p = request.parameters.get("unload_dependents")
        if p is not None:
            if p.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidArgument(
                    "invalid value type for 'unload_dependents' parameter, expected bool_param."
                )
            dependents = p.bool_param
        await self.dp.unload_model(request.model_name, dependents)
        return pb.RepositoryModelUnloadResponse()

    # ---- shared memory -------------------------------------------------------------------------

    @rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> Any:
        Status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = {r["name"]: Status(**r) for r in self.dp.shm.status(request.name)}
        return pb.SystemSharedMemoryStatusResponse(regions=regions)

    @rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> Any:
        self.dp.shm_register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> Any:
        self.dp.shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> Any:
        self.dp.cuda_shm_status(request.name)  # nothing is ever registered
        return pb.CudaSharedMemoryStatusResponse()

    @rpc
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> Any:
        self.dp.cuda_shm_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    @rpc
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> Any:
        self.dp.cuda_shm_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # ---- trace and log settings ----------------------------------------------------------------

    @rpc
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> Any:
        changes: dict[str, Any] | None = None
        if request.settings:
            changes = {}
            for key, setting in request.settings.items():
                values = list(setting.value)
                if key == "trace_level":
                    changes[key] = values or None
                elif not values:
                    changes[key] = None  # an empty list clears the model's override
                elif len(values) != 1:
                    raise InvalidArgument(f"expect only 1 value for '{key}'")
                else:
                    changes[key] = values[0]
        settings = self.dp.trace_setting(request.model_name, changes)
        Value = pb.TraceSettingResponse.SettingValue
        return pb.TraceSettingResponse(
            settings={
                k: Value(value=v if isinstance(v, list) else [str(v)]) for k, v in settings.items()
            }
        )

    @rpc
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> Any:
        if request.settings:
            changes = {}
            for key, setting in request.settings.items():
                which = setting.WhichOneof("parameter_choice")
                changes[key] = getattr(setting, which) if which is not None else None
            settings = logs.update_settings(changes)
        else:
            settings = logs.get_settings()
        Value = pb.LogSettingsResponse.SettingValue
        out = {}
        for key, value in settings.items():
            if isinstance(value, bool):
                out[key] = Value(bool_param=value)
            elif isinstance(value, int):
                out[key] = Value(uint32_param=value)
            else:
                out[key] = Value(string_param=str(value))
        return pb.LogSettingsResponse(settings=out)


def _check_repository_name(name: str) -> None:
    if name:
        raise Unsupported("'repository_name' specification is not supported")


class HealthService:
    """``grpc.health.v1.Health/Check``: SERVING when the server is ready (the service name is
    ignored, as by Triton)."""

    def __init__(self, dataplane: DataPlane, options: GrpcOptions | None = None) -> None:
        self.dp = dataplane
        self.options = options or GrpcOptions()

    @rpc
    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        Response = health_pb2.HealthCheckResponse
        serving = self.dp.health(ready=True)
        return Response(status=Response.SERVING if serving else Response.NOT_SERVING)
