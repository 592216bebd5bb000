"""Calls an instance process makes into the server (BLS inference, model control, custom
metrics), served on a pool thread of the server process so a slow one never stalls the reader."""

from __future__ import annotations

from typing import Any

from ..errors import InternalError, NaiadError, Unavailable
from ..inference import InferRequest
from .wire import Channel


def serve_call(host: Any, channel: Channel, call_id: int, method: str, args: tuple) -> None:
    try:
        if host is None:
            raise Unavailable("this instance has no server to call")
        if method == "infer":
            value = host.run_infer(args[0])
        elif method == "metric":
            value = getattr(host.metrics, args[0])(*args[1])
        elif method in ("load_model", "unload_model", "is_model_ready"):
            value = getattr(host, method)(*args)
        else:
            raise InternalError(f"unknown call '{method}'")
        ok = True
    except NaiadError as exc:
        ok, value = False, exc
    except Exception as exc:
        ok, value = False, InternalError(f"{type(exc).__name__}: {exc}")
    try:
        channel.send(("reply", call_id, ok, value))
    except OSError:
        pass


def serve_stream(
    host: Any, channel: Channel, cancels: dict[int, Any], call_id: int, request: InferRequest
) -> None:
    """A decoupled BLS call: each response as it comes, then the end."""
    try:
        if host is None:
            raise Unavailable("this instance has no server to call")
        items, cancel = host.run_infer_stream(request)
        cancels[call_id] = cancel
        for response in items:
            channel.send(("bls_item", call_id, response, None, response.final))
            if response.final:
                return
        channel.send(("bls_item", call_id, None, None, True))
    except NaiadError as exc:
        try:
            channel.send(("bls_item", call_id, None, exc, True))
        except OSError:
            pass
    except OSError:
        pass
    finally:
        cancels.pop(call_id, None)
