"""Publish triggers to high-templar rooms, from Python (and Django).

A trigger is ``{"rooms": [<room>, ...], "data": <any JSON>}`` (PROTOCOL.md section 4); every
websocket subscribed to one of the rooms receives ``data``. Two transports:

- :class:`AmqpPublisher`: RabbitMQ, exchange ``hightemplar`` (direct, non-durable), routing key
  ``*`` — what high-templar 3.1 backends did; every server node receives every trigger.
- :class:`HttpPublisher`: ``POST /trigger/`` with ``Authorization: Bearer <token>``; several
  triggers can go in one request (:meth:`HttpPublisher.batch`).

:func:`from_settings` builds either from a dict; :mod:`high_templar_publisher.django` adds
Django settings and ``publish_on_commit``.
"""

from .amqp import EXCHANGE, ROUTING_KEY, AmqpPublisher
from .errors import PublishError
from .http import HttpPublisher
from .trigger import make_trigger

__all__ = [
    "AmqpPublisher",
    "EXCHANGE",
    "HttpPublisher",
    "PublishError",
    "ROUTING_KEY",
    "from_settings",
    "make_trigger",
]

TRANSPORTS = ("amqp", "http")


def from_settings(settings):
    """A publisher from a dict: ``{"transport": "amqp"|"http", "url": ..., "token": ...}``.

    ``amqp`` also takes ``exchange`` and ``connection_name``; ``http`` takes ``token`` and
    ``timeout`` (seconds).
    """
    if not isinstance(settings, dict):
        raise ValueError("high-templar settings must be a dict")
    transport = settings.get("transport")
    url = settings.get("url")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: must be one of {TRANSPORTS}, not {transport!r}")
    if not url:
        raise ValueError("url: required")
    if transport == "amqp":
        return AmqpPublisher(
            url,
            exchange=settings.get("exchange", EXCHANGE),
            connection_name=settings.get("connection_name"),
        )
    return HttpPublisher(url, token=settings.get("token"), timeout=settings.get("timeout", 10.0))
