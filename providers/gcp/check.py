"""Is GCP usable from here, with which credentials and endpoint? (``gpubroker check``)

Reports where application-default credentials come from (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud application-default login``, the metadata server of a GCE VM) or that the
endpoints are pointed elsewhere and called anonymously, and where the project comes from.
It never reads out a credential or the content of its file.
"""

from __future__ import annotations

from broker.errors import BrokerError
from providers.base import ProviderCheck
from providers.gcp.errors import PROVIDER, RetryPolicy, call
from providers.gcp.session import COMPUTE_DEFAULT, Session, display_url

_NO_ADC = (
    "no application-default credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS"
)


def check_credentials(session: Session, *, probe: bool = False) -> ProviderCheck:
    """Without ``probe`` nothing is sent: with no credentials file, the metadata server is
    not asked. ``probe`` resolves credentials the way every call does and lists one zone."""
    compute = session.settings.gcp_compute_endpoint
    endpoint = display_url(compute) if compute else COMPUTE_DEFAULT
    credentials: str | None = None
    try:
        credentials = session.credential_source(probe=probe)
        if credentials is None:
            return ProviderCheck(PROVIDER, False, None, endpoint, _NO_ADC)
        project = session.project
        if probe:
            _list_one_zone(session)
    except BrokerError as exc:
        return ProviderCheck(PROVIDER, False, credentials, endpoint, exc.message)
    source = "config" if session.settings.gcp_project else "application-default credentials"
    return ProviderCheck(
        PROVIDER, True, credentials, endpoint, f"project {project} (from {source})"
    )


def _list_one_zone(session: Session) -> None:
    from google.cloud import compute_v1

    client = session.compute("ZonesClient")
    request = compute_v1.ListZonesRequest(project=session.project, max_results=1)
    call(
        lambda: next(iter(client.list(request=request, retry=None, timeout=30.0).pages)),
        what="list zones",
        policy=RetryPolicy(attempts=2, base_seconds=0.2),
    )
