"""Reading a job: its YAML file, overrides from the command line, the run date, the model check.

:mod:`~genai_pipeline.config` declares what a job may say; this module turns what a person
wrote into a checked :class:`~genai_pipeline.config.JobSpec`, or one :class:`ConfigError` line
naming the field. The model's hyper-parameters are checked here too, against the family's own
config from the registry, so a bad ``model.latent_dim`` fails before anything starts.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from genai_pipeline.config import JobSpec
from genai_pipeline.errors import ConfigError, format_validation_error
from genai_pipeline.masking import is_env_reference, literal_secret_in, mask_secrets
from genai_pipeline.models import model_config_for


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    target = data
    for key in keys[:-1]:
        existing = target.get(key)
        if existing is None:
            existing = target[key] = {}
        if not isinstance(existing, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        target = existing
    target[keys[-1]] = value


def parse_overrides(assignments: list[str], *, option: str = "--set") -> dict[str, Any]:
    """``["train.epochs=5", "generate.conditions.label=3"]`` → ``{dotted key: YAML value}``
    (also the flow parameters of ``trigger --param``, named by ``option`` in errors)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
            raise ConfigError(f"{option} {assignment!r}: expected KEY=VALUE with a dotted key")
        overrides[key] = yaml.safe_load(raw) if raw else ""
    return overrides


def literal_secrets(overrides: dict[str, Any]) -> list[str]:
    """The dotted keys of overrides that give a secret literally (a storage option the spec masks,
    or the webhook URL, not as ``${VAR}``). Where overrides are kept as they are written (Prefect
    stores a flow run's parameters in its database), such a value must not be accepted."""
    found = []
    for key, value in overrides.items():
        data: dict[str, Any] = {}
        _set_path(data, key, value)
        for section in ("dataset", "export"):
            part = data.get(section)
            options = part.get("storage_options") if isinstance(part, dict) else None
            if literal_secret_in(mask_secrets({"storage_options": options})):
                found.append(key)
        notify = data.get("notify")
        if (
            isinstance(notify, dict)
            and notify.get("webhook_url")
            and not is_env_reference(notify["webhook_url"])
        ):
            found.append(key)
    return found


def refuse_literal_secrets(overrides: dict[str, Any], *, option: str) -> None:
    """ConfigError naming the first override that gives a secret literally (see :func:`literal_secrets`)."""
    if found := literal_secrets(overrides):
        raise ConfigError(
            f"{option} {found[0]}: a secret given here is stored as it is in Prefect's flow-run "
            "parameters; write ${VAR} and set VAR in the worker's environment"
        )


def build_job(data: Any, *, overrides: dict[str, Any] | None = None, source: str = "job") -> JobSpec:
    """Validate raw job data (with dotted-key overrides applied) into a JobSpec or raise ConfigError."""
    if data is None:
        raise ConfigError(f"{source}: the job is empty (expected name, dataset, model, …)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job must be a mapping of sections, got {type(data).__name__}")
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False))  # a deep copy of plain data, in order
    for key, value in (overrides or {}).items():
        _set_path(data, key, value)
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{source}: ")) from None
    model_config_for(job, source=source)
    return job


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second ``train:`` section would quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_job(path: str | Path, *, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read a job YAML file safely (no Python tags) and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return build_job(data, overrides=overrides, source=str(path))


def parse_run_date(value: str | None) -> str:
    """A run date as YYYY-MM-DD; today (UTC) when not given."""
    if value is None:
        return dt.datetime.now(dt.UTC).date().isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"--run-date: expected YYYY-MM-DD (got {value!r})") from None
