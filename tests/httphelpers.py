"""Small helpers shared by the HTTP tests."""

from __future__ import annotations

import http.client

import numpy as np
import tritonclient.http as httpclient


def raw(server, method: str, path: str, body: bytes | None = None, headers=None):
    """One plain HTTP exchange: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def simple_inputs(binary0=True, binary1=True, batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), -1, dtype=np.int32)
    i0 = httpclient.InferInput("INPUT0", [batch, 16], "INT32")
    i0.set_data_from_numpy(a, binary_data=binary0)
    i1 = httpclient.InferInput("INPUT1", [batch, 16], "INT32")
    i1.set_data_from_numpy(b, binary_data=binary1)
    return a, b, [i0, i1]
