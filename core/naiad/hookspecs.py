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
