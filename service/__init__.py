"""The Lifelong control plane, in sub-packages by role.

- ``service.api``: HTTP: the FastAPI app, its routes, request and response models, dependencies.
- ``service.jobs``: what a request does, independent of HTTP: the job spec, the control plane,
  ingest checks, growth requests, and the domain's errors.
- ``service.state``: everything kept in Redis: the key layout, the store and its Lua scripts and
  codec, the typed records, the job state machine, the manifest as the workers read it.
- ``service.runtime``: what runs a job on Ray: the launcher, the per-job supervisor, its grow
  commands, the generations ledger, MLflow tracking and its sweeper, serving.
- ``service.local``: the stack on one machine: child processes, the embedded Redis, the demo.
- ``service.client``: the tools of a user: the Python client, the ``lifelong`` CLI, the live view.

``service.settings`` is the one place that reads the environment.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lifelong")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
