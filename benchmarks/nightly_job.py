"""Time each stage of a job, and the whole job through Prefect, and print its quality figures.

    python benchmarks/nightly_job.py deployments/jobs/penguins-vae.yaml [--set train.epochs=50] [--prefect]

Stages are called directly (the library without Prefect) so the figures show where the time goes;
``--prefect`` also runs the same job through the flow in Prefect's embedded mode, to show the
orchestration overhead. Peak RSS is the process's high-water mark (ru_maxrss), printed after each
stage as well, so the stage that raised it shows. Validation is given the model, as the flow gives
it (a streamed model's rows are validated streamed).
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time

import torch

from genai_pipeline import stages
from genai_pipeline.jobs import load_job, parse_overrides
from genai_pipeline.runs import Run


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--prefect", action="store_true", help="also run the job through the Prefect flow")
    args = parser.parse_args()
    output = tempfile.mkdtemp(prefix="genai-bench-")
    overrides = {**parse_overrides(args.set), "export.output": output}
    job = load_job(args.job, overrides=overrides)
    run = Run(job=job, run_date="2026-01-01")
    print(f"job {job.name}: {job.dataset.uri} → {job.model.family}, {job.generate.num_samples} samples")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"cuda={torch.cuda.is_available()}"
    )
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}

    def timed(name, fn, **kwargs):
        started = time.perf_counter()
        result = fn(run, **kwargs)
        timings[name] = time.perf_counter() - started
        peaks[name] = _peak_rss_mb()
        return result

    dataset = timed("ingest", stages.ingest)
    model = timed("train", stages.train, dataset=dataset)
    generated = timed("generate", stages.generate, model=model, dataset=dataset)
    report = timed("validate", stages.validate, dataset=dataset, generated=generated, model=model)
    if report.passed:
        timed("export", stages.export, dataset=dataset, model=model, generated=generated, verdict=report)
    print("\n| stage | seconds | peak RSS after it, MB |\n|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} | {peaks[name]:.0f} |")
    print(f"| **all stages** | **{sum(timings.values()):.2f}** |")
    fit = model.fit
    rate = fit["samples_per_second"]
    print(f"\ntraining: {fit['steps']} steps, {rate:.0f} samples/s, stopped by {fit['stopped']}")
    print(
        f"generation: {generated.num_samples / timings['generate']:.0f} samples/s (sample + encode + write)"
    )
    print(f"peak RSS: {_peak_rss_mb():.0f} MB")
    print(f"gate: {'passed' if report.passed else 'FAILED: ' + '; '.join(report.failures)}")
    for metric in report.metrics:
        if metric["scope"] != "column":
            print(f"  {metric['metric']}: {metric['value']:.3f} (threshold {metric['threshold']})")
    if args.prefect:
        from flows.settings import apply_prefect_defaults

        apply_prefect_defaults()
        from flows.synthesize import synthesize

        started = time.perf_counter()
        synthesize(job=job, run_date="2026-01-02")
        print(
            f"\nthrough Prefect (embedded mode, first flow run of the process): "
            f"{time.perf_counter() - started:.1f} s"
        )


if __name__ == "__main__":
    main()
