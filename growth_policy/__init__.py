"""growth_policy."""
