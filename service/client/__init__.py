"""The tools of a user: the Python client (``LifelongClient``), the ``lifelong`` CLI, the live view."""

from service.client.http import LifelongClient, LifelongError, encode_batch

__all__ = ["LifelongClient", "LifelongError", "encode_batch"]
