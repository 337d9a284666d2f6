"""``genai-pipeline``: run a job, check a job spec, list the built-in datasets.

Exit codes: 0 success, 1 the run failed (nothing was published), 2 the job spec or command line
is invalid (nothing was started).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genai_pipeline.config import JobSpec, load_job, parse_overrides, parse_run_date
from genai_pipeline.errors import ConfigError, PipelineError


def _load(args: argparse.Namespace) -> JobSpec:
    overrides = parse_overrides(args.set or [])
    if getattr(args, "output", None):
        overrides["export.output"] = args.output
    return load_job(args.job, overrides=overrides)


def _run(args: argparse.Namespace) -> int:
    job = _load(args)
    run_date = parse_run_date(args.run_date)
    from genai_pipeline.settings import apply_prefect_defaults

    apply_prefect_defaults()
    from flows.synthesize import synthesize

    route = f"{job.dataset.uri} → {job.model.family} → {job.export.output}"
    print(f"running job {job.name!r} for {run_date}: {route}", flush=True)
    try:
        result = synthesize(job=job, run_date=run_date)
    except PipelineError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a crash is still a failed run: say so in one line, exit non-zero
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"published {result['num_samples']} synthetic samples (run {result['run_id']})")
    print(f"  data:     {result['data_url']}")
    print(f"  manifest: {result['manifest_url']}")
    print(f"  report:   {result['report_url']}")
    for warning in result["warnings"]:
        print(f"  warning:  {warning}")
    return 0


def _check(args: argparse.Namespace) -> int:
    job = _load(args)
    print(
        f"{args.job}: OK — {job.dataset.modality} {job.model.family} on {job.dataset.uri}, "
        f"{job.generate.num_samples} samples to {job.export.output}/{job.name}"
    )
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from genai_pipeline.datasets.builtin import BUILTINS

    for dataset in BUILTINS.values():
        print(
            f"builtin://{dataset.name:<10} {dataset.modality:<8} label={dataset.label:<8} "
            f"{dataset.description} [{dataset.package}]"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genai-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("job", help="job spec YAML file")
        command.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a field, e.g. --set train.epochs=5 (repeatable)",
        )
        command.add_argument("--output", help="output URI (overrides export.output)")
        return command

    run = job_command("run", "run a job now (Prefect's embedded mode unless PREFECT_API_URL is set)")
    run.add_argument("--run-date", help="YYYY-MM-DD partition to write (default: today, UTC)")
    run.set_defaults(handler=_run)
    job_command("check", "validate a job spec without running it").set_defaults(handler=_check)
    commands.add_parser("datasets", help="list the built-in datasets").set_defaults(handler=_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
