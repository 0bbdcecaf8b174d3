"""Django integration: a publisher from settings, and publishing after the commit.

Settings::

    HIGH_TEMPLAR = {
        "transport": "http",                 # or "amqp"
        "url": "http://127.0.0.1:8080",      # amqp: "amqp://guest:guest@127.0.0.1:5672/%2F"
        "token": "the server's trigger_token",  # http only
    }

Use :func:`publish_on_commit` in code that writes to the database: the trigger goes out only
once the transaction commits, so a rolled-back save never reaches a browser, and a browser that
refetches on a publish sees the committed row.
"""

import logging
import threading

from django.conf import settings
from django.core.signals import setting_changed
from django.db import transaction

from . import from_settings
from .trigger import make_trigger

#: The settings name (a dict, see the module docs).
SETTING = "HIGH_TEMPLAR"

log = logging.getLogger("high_templar_publisher")
_lock = threading.Lock()
_publisher = None


def get_publisher():
    """The process-wide publisher built from ``settings.HIGH_TEMPLAR`` (created once)."""
    global _publisher
    with _lock:
        if _publisher is None:
            config = getattr(settings, SETTING, None)
            if config is None:
                raise RuntimeError(f"settings.{SETTING} is not set")
            _publisher = from_settings(config)
        return _publisher


def publish(rooms, data):
    """Publishes now, inside or outside a transaction. Raises on failure."""
    return get_publisher().publish(rooms, data)


def publish_on_commit(rooms, data, using=None):
    """Publishes once the current transaction (on database ``using``) commits; never if it
    rolls back. Outside a transaction (autocommit) it publishes immediately.

    The save already committed when this runs, so a failed publish is logged, not raised: the
    request that saved the row must not fail because a push could not be sent.
    """
    make_trigger(rooms, data)  # a bad room fails here, at the call site, not after the commit
    transaction.on_commit(lambda: _publish_logged(rooms, data), using=using)


def _publish_logged(rooms, data):
    try:
        publish(rooms, data)
    except Exception:  # noqa: BLE001 - see publish_on_commit: logged, never raised
        log.exception("high-templar publish after commit failed")


def _reset(setting, **kwargs):
    """Tests that override ``HIGH_TEMPLAR`` get a publisher for the new value."""
    global _publisher
    if setting == SETTING:
        with _lock:
            _publisher = None


setting_changed.connect(_reset)
