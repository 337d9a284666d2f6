"""Secrets in a job spec: which values are secret, how they are masked, where they are refused.

Storage credentials live in the spec as ``SecretStr``, so every serialisation of it (Prefect
parameters, run manifests, artifacts) shows ``**********``; ``${VAR}`` references are kept as
they are and expanded from the environment only when storage is opened. A secret is refused
where masking cannot follow it: written into a URL (it would travel with the URL into logs and
task states), and where a value is stored or sent as it was given (see ``jobs.literal_secrets``
and the job's check for an existing Dask cluster).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr

#: Keys whose values are secrets whatever their type, in any spelling (s3fs, botocore, MinIO, HTTP
#: headers, Azure SAS, …), at any depth of ``storage_options``.
SECRET_KEY = re.compile(r"key|secret|token|passw|credential|auth|cookie|sas|signature|private", re.IGNORECASE)
#: Storage options whose text values are shown (where the data is, how to reach it). Every other
#: text value is a secret, whatever it is called: an SSE customer key, an Authorization header.
VISIBLE_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "profile",
        "anon",
        "use_ssl",
        "verify",
        "client_kwargs",
        "config_kwargs",
        "s3",
        "addressing_style",
        "signature_version",
        "requester_pays",
        "default_block_size",
        "version_aware",
        "connect_timeout",
        "read_timeout",
        "retries",
        "max_attempts",
        "mode",
    }
)
_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


#: a URL with a user-info part (``s3://KEY:SECRET@bucket``, ``http://user:pass@host``)
_URL_CREDENTIALS = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")


def _credentials_in_urls(data: Any, where: str = "") -> list[str]:
    """The fields (dotted) of raw spec data whose value is a URL carrying credentials."""
    if isinstance(data, dict):
        return [
            found for key, value in data.items() for found in _credentials_in_urls(value, f"{where}{key}.")
        ]
    if isinstance(data, list):
        return [
            found
            for index, item in enumerate(data)
            for found in _credentials_in_urls(item, f"{where}{index}.")
        ]
    return [where.rstrip(".")] if isinstance(data, str) and _URL_CREDENTIALS.match(data) else []


def refuse_url_credentials(data: Any) -> Any:
    """Credentials written into a URL would reach logs, task states, manifests and webhooks with
    it: refused before the value is kept, and without repeating it in the error."""
    if found := _credentials_in_urls(data):
        raise ValueError(
            f"{found[0]}: a URL with credentials in it (user:secret@) is refused; give them in the "
            "environment (AWS_ACCESS_KEY_ID, …) or as ${VAR} in storage_options"
        )
    return data


def _masked(value: Any, key: str) -> Any:
    """``value`` (found under ``key``) with its secrets wrapped, containers walked."""
    if isinstance(value, dict):
        return {name: _masked(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    if isinstance(value, SecretStr) or is_env_reference(value):
        return value  # ${VAR} references are shown, expanded only when storage is opened
    if key not in VISIBLE_OPTIONS and (isinstance(value, str) or SECRET_KEY.search(key)):
        return SecretStr(str(value))
    return value


def is_env_reference(value: Any) -> bool:
    """Whether a value is a ``${VAR}`` reference (shown as it is, expanded when storage is opened)."""
    return isinstance(value, str) and bool(_ENV_REF.match(value))


def literal_secret_in(value: Any) -> bool:
    """Whether masked data (see :func:`mask_secrets`) holds a secret given literally."""
    if isinstance(value, dict):
        return any(literal_secret_in(item) for item in value.values())
    if isinstance(value, list):
        return any(literal_secret_in(item) for item in value)
    return isinstance(value, SecretStr) and not is_env_reference(value.get_secret_value())


def mask_secrets(options: Any) -> Any:
    """Wrap the secret values of storage options in ``SecretStr``, at any depth: every text value
    but the visible options', and any value under a key that names a secret. Every serialisation
    of the spec (Prefect parameters, manifests, artifacts) then shows ``**********``."""
    return _masked(options, "")
