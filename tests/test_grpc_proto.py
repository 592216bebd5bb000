"""naiad's gRPC schema is Triton's: every message, field, number, type and RPC of tritonclient's
own generated modules, compared descriptor by descriptor (packages aside, see service.proto)."""

from __future__ import annotations

import ast
from pathlib import Path

from google.protobuf import descriptor_pb2
from naiad.grpc import grpc_service_pb2 as naiad
from tritonclient.grpc import service_pb2 as triton

GRPC_DIR = Path(naiad.__file__).parent


def _fields(message) -> dict:
    """name -> (number, label, type, type name without its package, oneof index)."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    package = "." + message.file.package + "."
    return {
        f.name: (
            f.number,
            f.label,
            f.type,
            f.type_name.replace(package, "."),
            f.oneof_index if f.HasField("oneof_index") else None,
        )
        for f in proto.field
    }


def _walk(message, prefix=""):
    name = prefix + message.name
    yield name, message
    for nested in message.nested_types:
        yield from _walk(nested, name + ".")


def _messages(file) -> dict:
    out = {}
    for m in file.message_types_by_name.values():
        out.update(_walk(m))
    return out


def test_every_message_and_field_is_tritons():
    ours, theirs = _messages(naiad.DESCRIPTOR), _messages(triton.DESCRIPTOR)
    assert sorted(ours) == sorted(theirs)
    for name, message in theirs.items():
        assert _fields(ours[name]) == _fields(message), name
        assert ours[name].GetOptions().map_entry == message.GetOptions().map_entry, name


def test_model_config_in_responses_is_the_config_schema():
    field = naiad.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"]
    assert field.message_type.full_name == "naiad.inference.ModelConfig"


def _service_methods() -> dict:
    """RPC name -> (path, streaming kind, request, response) from the committed _grpc module."""
    tree = ast.parse((GRPC_DIR / "service_pb2_grpc.py").read_text())
    stub = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Stub"))
    out = {}
    for node in ast.walk(stub):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("unary_unary", "stream_stream", "unary_stream", "stream_unary"):
                path = node.args[0].value
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                request = kw["request_serializer"].split(".")[-2]
                response = kw["response_deserializer"].split(".")[-2]
                out[path.rsplit("/", 1)[1]] = (path, node.func.attr, request, response)
    return out


def test_service_paths_and_shapes_are_tritons():
    service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = _service_methods()
    assert sorted(ours) == sorted(m.name for m in service.methods)
    for method in service.methods:
        kind = {(False, False): "unary_unary", (True, True): "stream_stream"}[
            (method.client_streaming, method.server_streaming)
        ]
        assert ours[method.name] == (
            f"/inference.GRPCInferenceService/{method.name}",
            kind,
            method.input_type.name,
            method.output_type.name,
        )


def test_health_check_matches_grpc_health_v1():
    from naiad.grpc import health_pb2

    response = descriptor_pb2.DescriptorProto()
    health_pb2.HealthCheckResponse.DESCRIPTOR.CopyToProto(response)
    status = response.enum_type[0]
    assert [(v.name, v.number) for v in status.value] == [
        ("UNKNOWN", 0),
        ("SERVING", 1),
        ("NOT_SERVING", 2),
        ("SERVICE_UNKNOWN", 3),
    ]
    assert health_pb2.HealthCheckRequest.DESCRIPTOR.fields_by_name["service"].number == 1
    text = (GRPC_DIR / "health_service_pb2_grpc.py").read_text()
    assert "'/grpc.health.v1.Health/Check'" in text


def test_one_error_table_for_every_transport():
    """Triton's HttpCodeFromError and GrpcStatusUtil::CodeToStatus, from naiad.errors.STATUS."""
    import grpc
    from naiad import errors
    from naiad.grpc.options import status_code

    expected = {
        errors.InvalidArgument: (400, grpc.StatusCode.INVALID_ARGUMENT),
        errors.ModelLoadError: (400, grpc.StatusCode.INVALID_ARGUMENT),
        errors.NotFound: (404, grpc.StatusCode.NOT_FOUND),
        errors.Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
        errors.Unsupported: (501, grpc.StatusCode.UNIMPLEMENTED),
        errors.InternalError: (500, grpc.StatusCode.INTERNAL),
        errors.AlreadyExists: (400, grpc.StatusCode.ALREADY_EXISTS),
        errors.Cancelled: (400, grpc.StatusCode.CANCELLED),
    }
    for cls, (http, code) in expected.items():
        exc = cls("x")
        assert (int(exc.status), status_code(exc)) == (http, code), cls
    assert set(errors.STATUS) == set(errors.ErrorCode)
    # an error re-raised with another's kind (a load failure keeps its cause's code)
    wrapped = errors.ModelLoadError("failed to load 'm', failed to poll from model repository")
    wrapped.code = errors.InternalError.code
    assert status_code(wrapped) == grpc.StatusCode.INTERNAL and wrapped.status == 500
    legacy = errors.ModelLoadError("y")
    legacy.status = 503  # code that sets an HTTP status still works
    assert status_code(legacy) == grpc.StatusCode.UNAVAILABLE
