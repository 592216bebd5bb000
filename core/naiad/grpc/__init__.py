"""naiad's gRPC endpoint: Triton's ``inference.GRPCInferenceService`` and ``grpc.health.v1``.

- ``*.proto`` and the generated ``*_pb2*`` modules: the schema (``regenerate.sh``);
- :mod:`.codec`: ModelInferRequest <-> :class:`~naiad.inference.InferRequest` / response;
- :mod:`.service`: every unary RPC over the :class:`~naiad.dataplane.DataPlane`;
- :mod:`.stream`: ``ModelStreamInfer``;
- :mod:`.config`, :mod:`.options`, :mod:`.server`: the flags, and the grpc.aio server;
- :mod:`.front` (with :mod:`.calls`), over :mod:`.h2` (with :mod:`.h2frames`, :mod:`.h2send`):
  the lean front, naiad's own HTTP/2 server for gRPC (the default).

Nothing outside this package imports grpc; :mod:`.config` imports it neither.
"""
