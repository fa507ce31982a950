"""Aggregation (pure functions) and the strategies that use it; see registry.py for the names."""
