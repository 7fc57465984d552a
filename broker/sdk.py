"""The Python SDK: ``from broker import Broker``.

A thin facade over ``broker.services``: every public method returns dataclasses, takes
plain Python values and raises ``broker.errors`` types. The CLI is built on it. Services
are imported inside methods so that importing the SDK stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING

from broker.config import Settings, load_settings

if TYPE_CHECKING:
    from broker.db.engine import Database


class Broker:
    """One broker over one database.

    >>> broker = Broker()                      # settings from GPUBROKER_* and config.toml
    >>> broker = Broker(database_url="sqlite:///fleet.db")
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        home: str | None = None,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if settings is None:
            import os

            merged = dict(os.environ if env is None else env)
            if home is not None:
                merged["GPUBROKER_HOME"] = str(home)
            if database_url is not None:
                merged["GPUBROKER_DATABASE_URL"] = database_url
            settings = load_settings(merged)
        self.settings = settings

    @cached_property
    def db(self) -> Database:
        from broker.db.engine import Database

        return Database(self.settings.database_url)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- offers and providers (catalog, refresh, check) ---

    # --- estimates and calibration ---

    # --- planning ---

    # --- jobs and execution ---

    # --- reports, budgets and schedules ---
