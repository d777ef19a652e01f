"""What each request does, independent of HTTP: job spec, control plane, ingest, growth requests."""
