"""Execution: one shard's host loop (``runner``), the driver, Ray actors and Ray Jobs."""
