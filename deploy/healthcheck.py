"""Container health check: what "healthy" means depends on ``$LIFELONG_ROLE``.

- ``api``: ``GET /readyz`` of the API on ``$LIFELONG_PORT`` (default 8000) answers 200.
- ``mlflow``: ``GET /health`` of the tracking server on ``$MLFLOW_PORT`` (default 5000) answers 200.
- ``ray-head`` / ``ray-worker``: the cluster's GCS answers (``ray health-check``) and this
  container's raylet runs.

Standard library only; exit status 0 is healthy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    role = os.environ.get("LIFELONG_ROLE", "api")
    if role == "api":
        port = os.environ.get("LIFELONG_PORT", "8000")
        return 0 if _http_ok(f"http://127.0.0.1:{port}/readyz") else 1
    if role == "mlflow":
        port = os.environ.get("MLFLOW_PORT", "5000")
        return 0 if _http_ok(f"http://127.0.0.1:{port}/health") else 1
    if role in ("ray-head", "ray-worker"):
        address = os.environ.get("RAY_ADDRESS", "127.0.0.1:6380")
        cluster = subprocess.run(
            ["ray", "health-check", "--address", address], capture_output=True, check=False
        )
        # Inside a container, the node's own raylet is the only one there is.
        raylet = subprocess.run(["pgrep", "-x", "raylet"], capture_output=True, check=False)
        return cluster.returncode or raylet.returncode
    print(f"healthcheck: unknown LIFELONG_ROLE {role!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
