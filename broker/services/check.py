"""``gpubroker check``: which providers are usable, with which credentials and endpoint.

Only the *source* of a credential is ever named (``env``, ``shared-credentials-file``,
``GOOGLE_APPLICATION_CREDENTIALS`` ...), never a key, token or file content. No cloud API is
called unless an adapter offers its own ``check``; the answers come from each SDK's
standard credential chain, as the adapters would use it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.config import Settings

CHECKED = ("catalog", "local", "aws", "gcp")


@dataclass(frozen=True)
class ProviderCheck:
    provider: str
    usable: bool
    credentials: str | None  # where credentials come from, never the credential
    endpoint: str | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(settings: Settings) -> list[ProviderCheck]:
    return [_one(name, settings) for name in CHECKED]


def _one(name: str, settings: Settings) -> ProviderCheck:
    try:
        own = _adapter_check(name, settings)
        if own is not None:
            return own
        return {"catalog": _catalog, "local": _local, "aws": _aws, "gcp": _gcp}[name](settings)
    except BrokerError as exc:
        return ProviderCheck(name, False, None, None, str(exc).splitlines()[0])
    except Exception as exc:  # an SDK's message may echo a request: name the type only
        return ProviderCheck(name, False, None, None, f"check failed ({type(exc).__name__})")


def _adapter_check(name: str, settings: Settings) -> ProviderCheck | None:
    """An adapter's own ``check(settings)`` (module level) or ``check()`` method, if any."""
    import importlib
    import importlib.util

    module_name = f"providers.{name}"
    if name in ("catalog", "local") or importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    answer: Any = None
    if not callable(getattr(module, "create", None)):
        return None
    if callable(getattr(module, "check", None)):
        answer = module.check(settings)
    else:
        provider = module.create(settings)
        if callable(getattr(provider, "check", None)):
            answer = provider.check()
    if answer is None:
        return None
    if isinstance(answer, ProviderCheck):
        return answer
    data = dict(answer) if isinstance(answer, dict) else vars(answer)
    return ProviderCheck(
        provider=name,
        usable=bool(data.get("usable")),
        credentials=data.get("credentials") or data.get("credential_source"),
        endpoint=data.get("endpoint") or data.get("compute_endpoint"),
        detail=str(data.get("detail") or data.get("reason") or ""),
    )


def _catalog(settings: Settings) -> ProviderCheck:
    from providers.catalog import snapshot, snapshot_date

    as_of = snapshot_date()
    when = as_of.date().isoformat() if as_of else "unknown date"
    return ProviderCheck(
        "catalog", True, "none needed", "bundled snapshot", f"{len(snapshot())} offers as of {when}"
    )


def _local(settings: Settings) -> ProviderCheck:
    import importlib.util

    if importlib.util.find_spec("providers.local") is None:
        return ProviderCheck("local", False, None, None, "adapter not installed")
    return ProviderCheck("local", True, "none needed", "this machine", "CPU (and GPUs, if any)")


def _aws(settings: Settings) -> ProviderCheck:
    import boto3
    import botocore.session

    core = botocore.session.Session()
    # Off EC2 the instance-metadata lookup would wait for seconds; one short try is enough.
    core.set_config_variable("metadata_service_timeout", 1)
    core.set_config_variable("metadata_service_num_attempts", 1)
    session = boto3.Session(botocore_session=core)
    credentials = session.get_credentials()
    region = session.region_name or (settings.aws_regions[0] if settings.aws_regions else None)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        endpoint = f"https://ec2.{region or 'us-east-1'}.amazonaws.com"
    regions = ", ".join(settings.aws_regions) or "all enabled regions"
    if credentials is None:
        return ProviderCheck(
            "aws", False, None, endpoint,
            "no credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run on an instance role",
        )  # fmt: skip
    method = getattr(credentials, "method", None) or "unknown"
    if method in ("shared-credentials-file", "config-file", "sso") and session.profile_name:
        method = f"{method} (profile {session.profile_name})"
    return ProviderCheck("aws", True, method, endpoint, f"regions: {regions}")


def _adc_file() -> tuple[str, Path] | None:
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if explicit:
        return "GOOGLE_APPLICATION_CREDENTIALS", Path(explicit)
    config = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    well_known = Path(config) / "application_default_credentials.json"
    if well_known.exists():
        return "gcloud application-default login", well_known
    return None


def _gcp(settings: Settings) -> ProviderCheck:
    endpoint = settings.gcp_compute_endpoint or "https://compute.googleapis.com"
    project = settings.gcp_project
    if settings.gcp_compute_endpoint and settings.gcp_compute_endpoint.startswith("http://"):
        usable = project is not None
        detail = f"project {project}" if project else "no project: set GPUBROKER_GCP_PROJECT"
        return ProviderCheck("gcp", usable, "anonymous (plain-HTTP endpoint)", endpoint, detail)
    found = _adc_file()
    if found is None:
        return ProviderCheck(
            "gcp", False, None, endpoint,
            "no application-default credentials: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS",
        )  # fmt: skip
    source, path = found
    if not path.exists():
        return ProviderCheck("gcp", False, source, endpoint, "the credentials file does not exist")
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, adc_project = google.auth.default()
    except DefaultCredentialsError:
        return ProviderCheck("gcp", False, source, endpoint, "the credentials file is not valid")
    project = project or adc_project
    kind = type(credentials).__module__.rsplit(".", 1)[-1].replace("_", " ")
    if not project:
        return ProviderCheck(
            "gcp", False, f"{source} ({kind})", endpoint, "no project: set GPUBROKER_GCP_PROJECT"
        )
    return ProviderCheck("gcp", True, f"{source} ({kind})", endpoint, f"project {project}")
