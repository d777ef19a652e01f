"""HTTP: the FastAPI app (``service.api.app``), its routes, models, dependencies, limits, metrics."""
