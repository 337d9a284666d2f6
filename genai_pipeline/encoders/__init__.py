"""Tabular encoders: reversible transforms between tables and model matrices."""
