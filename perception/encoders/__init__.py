"""Vision encoder implementations."""
