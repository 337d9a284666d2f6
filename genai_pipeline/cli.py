"""``genai-pipeline``: run a job, check a job spec, list the built-in datasets, deploy the nightly
jobs to Prefect and trigger a deployment from CI.

Exit codes: 0 success, 1 the run failed (nothing was published) or a deployment step failed, 2 the
job spec or command line is invalid (nothing was started).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from genai_pipeline.config import JobSpec
from genai_pipeline.errors import ConfigError, PipelineError
from genai_pipeline.jobs import load_job, parse_overrides, parse_run_date, refuse_literal_secrets
from genai_pipeline.runs import check_run_date, check_run_id


def _load(args: argparse.Namespace) -> JobSpec:
    overrides = parse_overrides(args.set or [])
    if getattr(args, "output", None):
        overrides["export.output"] = args.output
    if getattr(args, "workspace", None):
        overrides["export.workspace"] = args.workspace
    return load_job(args.job, overrides=overrides)


def _run(args: argparse.Namespace) -> int:
    job = _load(args)
    run_date = parse_run_date(args.run_date)
    from flows.settings import boot_temporary_server  # Prefect's environment defaults, then Prefect

    server = boot_temporary_server()
    from flows.synthesize import synthesize

    if server is not None:
        import great_expectations  # noqa: F401  (ingest needs it: loaded while the server boots)

    route = f"{job.dataset.source} → {job.model.family} → {job.export.output}"
    print(f"running job {job.name!r} for {run_date}: {route}", flush=True)
    try:
        if server is not None:
            server.wait(timeout=float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
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
    print(f"  private:  {job.export.workspace.rstrip('/')}/{job.name} (real data and models: never share it)")
    for warning in result["warnings"]:
        print(f"  warning:  {warning}")
    return 0


def _check(args: argparse.Namespace) -> int:
    job = _load(args)
    print(
        f"{args.job}: OK — {job.dataset.modality} {job.model.family} on {job.dataset.source}, "
        f"{job.generate.num_samples} samples to {job.export.output}/{job.name}"
    )
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from genai_pipeline.datasets.builtin import BUILTINS

    for dataset in BUILTINS.values():
        print(
            f"builtin://{dataset.name:<21} {dataset.modality:<8} label={dataset.label or '-':<8} "
            f"{dataset.description} [{dataset.package}]"
        )
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from flows import deploy

    state = Path(args.state_dir)
    if args.stop:
        stopped = deploy.stop_local(state)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    env = dict(os.environ)
    if not env.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = deploy.start_local(state, args.port, args.pool or "genai-process", env)
        print(f"started a local Prefect server and a process worker (pids and logs in {state})")
    names = deploy.deploy(
        Path(args.prefect_file),
        cron=args.cron,
        timezone=args.timezone,
        pool=args.pool,
        on_overlap=args.on_overlap,
        env=env,
    )
    print(f"deployed {len(names)} deployments to {env['PREFECT_API_URL']}:")
    for name in names:
        print(f"  {name}")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            f"use it: export PREFECT_API_URL={env['PREFECT_API_URL']}; stop it: genai-pipeline deploy --stop"
        )
    return 0


def _trigger(args: argparse.Namespace) -> int:
    from flows import deploy

    parameters = parse_overrides(args.param or [], option="--param")
    if "run_id" in parameters:  # it names folders: refused here, before anything is triggered
        check_run_id(parameters["run_id"], field="--param run_id")
    if "run_date" in parameters:
        parameters["run_date"] = check_run_date(str(parameters["run_date"]), field="--param run_date")
    if args.set:
        refuse_literal_secrets(parse_overrides(args.set), option="--set")  # checked here, applied by the flow
        parameters["overrides"] = list(args.set)
    elif isinstance(parameters.get("overrides"), list):
        refuse_literal_secrets(
            parse_overrides(list(map(str, parameters["overrides"]))), option="--param overrides:"
        )
    if args.run_date:
        parameters["run_date"] = parse_run_date(args.run_date)
    return deploy.trigger(args.deployment, parameters, timeout=args.timeout)


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
        command.add_argument(
            "--workspace", help="private workspace URI for real data and models (overrides export.workspace)"
        )
        return command

    run = job_command("run", "run a job now (Prefect's embedded mode unless PREFECT_API_URL is set)")
    run.add_argument("--run-date", help="YYYY-MM-DD partition to write (default: today, UTC)")
    run.set_defaults(handler=_run)
    job_command("check", "validate a job spec without running it").set_defaults(handler=_check)
    commands.add_parser("datasets", help="list the built-in datasets").set_defaults(handler=_datasets)
    deploy = commands.add_parser(
        "deploy", help="deploy every job in deployments/prefect.yaml (a local server and worker if no API)"
    )
    deploy.add_argument("--prefect-file", default="deployments/prefect.yaml")
    deploy.add_argument("--cron", help='the nightly schedule, e.g. "30 1 * * *" (default: the file\'s)')
    deploy.add_argument("--timezone", help="the schedule's timezone, e.g. Europe/Berlin")
    deploy.add_argument("--pool", help="work pool (default: the file's, genai-process)")
    deploy.add_argument(
        "--on-overlap", choices=["wait", "cancel"], help="a run while the job's last one runs (default: wait)"
    )
    deploy.add_argument("--state-dir", default=".prefect-local", help="local server/worker pids, logs, DB")
    deploy.add_argument("--port", type=int, default=4200, help="local server port")
    deploy.add_argument("--stop", action="store_true", help="stop the local server and worker")
    deploy.set_defaults(handler=_deploy)
    trigger = commands.add_parser(
        "trigger", help="run a deployment and wait: exit 0 only when it Completed (for CI)"
    )
    trigger.add_argument("deployment", help="NAME or synthesize/NAME")
    trigger.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job field")
    trigger.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="a flow parameter (YAML value)"
    )
    trigger.add_argument("--run-date", help="YYYY-MM-DD partition to write")
    trigger.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    trigger.set_defaults(handler=_trigger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:  # a deployment step: the run itself reports its own failures
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
