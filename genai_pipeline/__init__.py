"""genai_pipeline: turn a real dataset into validated synthetic data, as a nightly batch job.

The library runs without Prefect; ``flows/`` only orchestrates the stage functions in
:mod:`genai_pipeline.stages`.
"""

__version__ = "0.1.0"
