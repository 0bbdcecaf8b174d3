"""Publishing over RabbitMQ, as high-templar 3.1 backends did (PROTOCOL.md section 4)."""

import logging
import threading

import pika
import pika.exceptions

from .errors import PublishError
from .trigger import encode, make_trigger

#: The exchange every server node binds its own queue to.
EXCHANGE = "hightemplar"
#: The routing key of every trigger (and of every node's binding).
ROUTING_KEY = "*"
#: One retry on a fresh connection covers a connection the broker or network dropped while
#: idle; a broker that is really down fails fast instead of stalling the caller.
ATTEMPTS = 2

log = logging.getLogger("high_templar_publisher")


class AmqpPublisher:
    """A persistent RabbitMQ connection publishing to the ``hightemplar`` exchange.

    The connection is opened on first use and reopened when it turns out broken. Publisher
    confirms are on, so a publish returns only once the broker has the message: a dead
    connection raises (and is retried) instead of losing the trigger silently. Thread-safe
    (one lock around the connection, as pika's BlockingConnection is not).
    """

    def __init__(self, url="amqp://guest:guest@127.0.0.1:5672/%2F", exchange=EXCHANGE,
                 connection_name=None):
        self.parameters = pika.URLParameters(url)
        if connection_name:
            # Shown in the RabbitMQ management UI and `rabbitmqctl list_connections`.
            self.parameters.client_properties = {"connection_name": connection_name}
        self.exchange = exchange
        self._lock = threading.Lock()
        self._connection = None
        self._channel = None

    def publish(self, rooms, data):
        """Publishes one trigger; raises :class:`PublishError` if the broker cannot take it."""
        self._send([encode(make_trigger(rooms, data))])

    def publish_many(self, triggers):
        """Publishes ``[(rooms, data), ...]``, one message per trigger (as the original did)."""
        self._send([encode(make_trigger(rooms, data)) for rooms, data in triggers])

    def close(self):
        with self._lock:
            self._drop()

    def _send(self, bodies):
        properties = pika.BasicProperties(content_type="application/json")
        with self._lock:
            sent = 0
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    channel = self._ensure_channel()
                    for body in bodies[sent:]:
                        channel.basic_publish(self.exchange, ROUTING_KEY, body, properties)
                        sent += 1
                    return
                except pika.exceptions.AMQPError as error:
                    self._drop()
                    if attempt == ATTEMPTS:
                        raise PublishError(f"RabbitMQ publish failed: {error!r}") from error
                    log.warning("RabbitMQ connection lost (%r); reconnecting", error)

    def _ensure_channel(self):
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        self._connection = pika.BlockingConnection(self.parameters)
        channel = self._connection.channel()
        # The same declaration as the server's, so publishing works whichever starts first.
        channel.exchange_declare(self.exchange, exchange_type="direct", durable=False)
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _drop(self):
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass  # already broken: nothing left to close
