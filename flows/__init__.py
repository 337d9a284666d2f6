"""Prefect flows: thin orchestration of :mod:`genai_pipeline.stages`."""
