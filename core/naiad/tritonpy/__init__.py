"""Triton's python backend in naiad: ``triton_python_backend_utils`` and the runner of
``class TritonPythonModel`` files (see ``docs/python-backend.md``)."""
