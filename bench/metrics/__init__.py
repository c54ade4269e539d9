"""Metrics of a cell's samples: solver error, moment and likelihood metrics, FID/KID."""
