"""The REST API: routes, their models and dependencies, middleware, metrics."""
