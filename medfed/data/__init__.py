"""Data sources (one module each), partitioners, and MONAI preprocessing."""
