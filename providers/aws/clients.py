"""One boto3 session and its clients, with the retry policy and event hooks of the adapter.

Every client uses botocore's *standard* retry mode: throttling, 5xx and transient network
errors are retried with jittered exponential backoff, ``max_attempts`` tries in all
(``GPUBROKER_AWS_MAX_ATTEMPTS``). Endpoints follow boto3's own configuration, so
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_EC2`` ...) points every call elsewhere.

Event hooks (``register``) reach every client, made before or after: tests use them to
inject the faults a local endpoint cannot produce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers.aws.errors import aws_call

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


_LOADER: list[Any] = []  # botocore's model loader, shared by the sessions made here


def _new_session() -> Any:
    """A fresh boto3 session (its own credential chain) sharing one model loader, so the
    large EC2 service model is parsed once per process, not once per provider."""
    import boto3

    session = boto3.session.Session()
    if _LOADER:
        session._session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session._session.get_component("data_loader"))
    return session


class Clients:
    def __init__(self, max_attempts: int, session: Any | None = None) -> None:
        with aws_call("open a session", DEFAULT_REGION):
            self.session = session if session is not None else _new_session()
        self.max_attempts = max_attempts
        self._clients: dict[tuple[str, str, int], Any] = {}
        self._hooks: list[tuple[str, Callable[..., Any]]] = []

    @property
    def default_region(self) -> str:
        return self.session.region_name or DEFAULT_REGION

    def client(self, service: str, region: str, *, attempts: int | None = None) -> Any:
        """The client for ``service`` in ``region`` (``attempts`` overrides the retry budget)."""
        tries = attempts or self.max_attempts
        key = (service, region, tries)
        client = self._clients.get(key)
        if client is None:
            from botocore.config import Config

            config = Config(
                # total_max_attempts counts the first try; botocore's max_attempts would not.
                retries={"mode": "standard", "total_max_attempts": tries},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                user_agent_extra="gpubroker",
            )
            with aws_call(f"create the {service} client", region):
                client = self.session.client(service, region_name=region, config=config)
            for event, handler in self._hooks:
                client.meta.events.register(event, handler)
            self._clients[key] = client
        return client

    def register(self, event: str, handler: Callable[..., Any]) -> None:
        """Run ``handler`` on botocore ``event`` (e.g. ``before-send.ec2.RunInstances``)."""
        self._hooks.append((event, handler))
        for client in self._clients.values():
            client.meta.events.register(event, handler)

    def unregister(self, event: str, handler: Callable[..., Any]) -> None:
        self._hooks = [(e, h) for e, h in self._hooks if (e, h) != (event, handler)]
        for client in self._clients.values():
            client.meta.events.unregister(event, handler)
