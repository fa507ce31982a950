"""Metrics and (later) statistics and reports."""
