"""Everything Prefect, and nothing else: the flow that orchestrates :mod:`genai_pipeline.stages`
(``synthesize``), the environment defaults Prefect needs before it is imported (``settings``),
and deploying the nightly jobs to a Prefect server and triggering them from CI (``deploy``).

The library in ``genai_pipeline`` never imports Prefect; its command line reaches it through here.
"""
