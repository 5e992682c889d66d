"""The configuration addon: declares the TokenPak addons' options and checks every value.

``load`` declares them (``options.declare``); ``configure`` parses them with the pure
``options.parse`` into an immutable ``Settings`` and turns a bad value into one ``OptionsError``
line (at start-up: one line and exit 2, before the proxy listens, see ``startup``), names a
misspelt ``tokenpak_*`` option, applies ``tokenpak_quiet`` and checks that an OTLP collector can
be used. Each other addon parses the values it needs itself, with the same function.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from tokenpak_mitm import __version__
from tokenpak_mitm.core.account.pricing import warm as warm_prices
from tokenpak_mitm.proxy.options import Settings, declare, parse
from tokenpak_mitm.proxy.quiet import set_quiet
from tokenpak_mitm.proxy.startup import PREFIX, exit_startup, guard_configure, unknown_option_message
from tokenpak_mitm.store.dburl import display, is_postgres
from tokenpak_mitm.store.metrics import MetricsUnavailable, parse_address, require_prometheus
from tokenpak_mitm.store.otel import OtelUnavailable, require_otel
from tokenpak_mitm.store.postgres import MissingExtra
from tokenpak_mitm.store.postgres import require as require_postgres

__all__ = ["Config", "check"]

logger = logging.getLogger("tokenpak")


def check(opts: Any, updated: Collection[str] | None = None) -> Settings:
    """The options' ``Settings``, or ``OptionsError`` with one line for a bad value among
    ``updated`` (None: all). Pure but for the extras' presence: also run by ``tokenpak run`` before
    mitmdump starts (`startup.preflight`)."""
    def checked(name: str) -> bool:
        return updated is None or name in updated

    try:
        settings = parse(opts, updated)
        if checked("tokenpak_metrics") and settings.metrics:
            parse_address(settings.metrics)
            require_prometheus()
    except (ValueError, MetricsUnavailable) as e:
        raise exceptions.OptionsError(str(e)) from e
    if checked("tokenpak_otlp") and settings.otlp:
        try:
            require_otel()  # the store exports every row it writes
        except OtelUnavailable as e:
            raise exceptions.OptionsError(str(e)) from e
    if checked("tokenpak_db") and is_postgres(settings.db):
        try:
            require_postgres()
        except MissingExtra as e:
            raise exceptions.OptionsError(str(e)) from None
    return settings


class Config:
    """Declares and checks the ``tokenpak_*`` options; says the proxy runs."""

    name = "tokenpak_config"

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.started = threading.Event()  # set by `running`; see addon.watch_startup

    @property
    def is_running(self) -> bool:
        return self.started.is_set()

    def load(self, loader: Loader) -> None:
        declare(loader)

    @guard_configure
    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if not self.is_running:
            known = [name for name in opts.keys() if name.startswith(PREFIX)]  # noqa: SIM118 - OptManager is not iterable
            message = unknown_option_message(getattr(opts, "deferred", {}).keys(), known)
            if message:
                exit_startup(message)
        self.settings = settings = check(opts, updated)
        if "tokenpak_quiet" in updated:
            set_quiet(settings.quiet)

    def running(self) -> None:
        self.started.set()
        modes = ",".join(str(m) for m in ctx.options.mode)
        db = display(self.settings.db) if self.settings is not None else "-"
        metrics = self.settings.metrics if self.settings is not None else ""
        logger.info(
            "tokenpak-mitm %s running: db=%s mode=%s cache=%s ttl=%s%s",
            __version__, db, modes, ctx.options.tokenpak_cache, ctx.options.tokenpak_cache_ttl,
            f" metrics=http://{metrics}/metrics" if metrics else "",
        )
        warm_prices()  # before traffic, not on the first request's turn of the event loop
