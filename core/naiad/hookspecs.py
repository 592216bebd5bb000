"""Every hook naiad calls, documented as API reference.

Hooks *register*; the registered objects then run without pluggy on the request path. A plugin
module imports only ``naiad`` at top level and imports its framework lazily, inside
:meth:`naiad.InferenceBackend.load`.

A plugin is a module with functions marked ``@naiad.hookimpl``, published through the
``naiad.backends`` entry-point group::

    [project.entry-points."naiad.backends"]
    onnxruntime = "naiad_backend_onnx"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .http.edge import HttpHooks
    from .plugins import BackendRegistry

hookspec = pluggy.HookspecMarker("naiad")


@hookspec
def naiad_register_backends(registry: BackendRegistry) -> None:
    """Register backend classes with ``registry.register(cls)``.

    :param registry: the server's backend registry. A class is found by its ``name`` (the
        config's ``backend`` field, e.g. ``"onnxruntime"``) and by each name in its ``platforms``
        (the config's ``platform`` field, e.g. ``"onnxruntime_onnx"``).

    Called once per server start-up, for every plugin, in discovery order: built-in plugins,
    then ``naiad.backends`` entry points, then ``--plugin`` modules. A later registration of the
    same name replaces an earlier one, so a third party can override a built-in backend.
    """


@hookspec
def naiad_register_http_hooks(hooks: HttpHooks) -> None:
    """Add what a middleware would do (authentication, CORS, tracing, header forwarding) to
    every HTTP front: ``hooks.request.append(fn)`` and ``hooks.answer.append(fn)``.

    :param hooks: the server's :class:`naiad.http.edge.HttpHooks`. A request hook
        ``fn(request) -> Answer | None`` runs before the endpoint's handler, for requests the
        lean front answers and those aiohttp answers alike; an answer it returns
        (``(status, body, content_type, headers)``) is sent instead of the handler's. An answer
        hook ``fn(request, status, headers) -> None`` may edit the headers of every answer just
        before it is written (not ``Content-Length``, ``Connection`` or ``Content-Type``).
        ``request`` is a :class:`naiad.http.edge.Request`. Hooks run on the event loop: they
        must not block.

    Called once per server start-up, for every plugin, in discovery order.
    """
