"""AMQP end to end: AmqpPublisher → RabbitMQ → the server's own AMQP source → a websocket.

Needs a server binary with ``--amqp-url`` (the AMQP trigger source); a binary without it is
reported as skipped with the reason, RabbitMQ missing still fails.
"""

import json
import subprocess

import pytest
import websocket

from conftest import AMQP_URL, BINARY, TOKEN, Subscriber, start_server, stop_server
from high_templar_publisher import AmqpPublisher

#: Each probe waits this long for its echo before the next is sent; the server binds its queue
#: asynchronously after it starts listening, so the first probes may go nowhere.
PROBE_WAIT = 0.5
#: Probes before giving up: 20 × 0.5 s, the usual 10 s test deadline.
PROBES = 20


def binary_has_amqp_source():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} missing: run `cargo build` at the repository root")
    help_text = subprocess.run([str(BINARY), "--help"], capture_output=True, text=True).stdout
    return "--amqp-url" in help_text


@pytest.fixture
def amqp_server(backend, consumer):  # consumer: fails early if RabbitMQ is unreachable
    if not binary_has_amqp_source():
        pytest.skip("this server binary has no --amqp-url (AMQP trigger source) yet")
    server = start_server("--api-url", backend, "--trigger-token", TOKEN, "--amqp-url", AMQP_URL)
    yield server
    stop_server(server)


def test_amqp_publish_reaches_a_websocket_through_the_server(amqp_server, room):
    subscriber = Subscriber(amqp_server)
    publisher = AmqpPublisher(AMQP_URL)
    try:
        subscriber.subscribe(room)
        wait_until_the_server_consumes(publisher, subscriber, room)
        publisher.publish([room], {"id": 42, "text": "over RabbitMQ"})
        while True:  # a late probe may still come first
            data = subscriber.next_publish()
            if data != "probe":
                break
        assert data == {"id": 42, "text": "over RabbitMQ"}
    finally:
        publisher.close()
        subscriber.close()


def wait_until_the_server_consumes(publisher, subscriber, room):
    subscriber.ws.settimeout(PROBE_WAIT)
    try:
        for _ in range(PROBES):
            publisher.publish([room], "probe")
            try:
                frame = json.loads(subscriber.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            assert frame["type"] == "publish" and frame["data"] == "probe", frame
            return
        pytest.fail("the server never delivered an AMQP trigger")
    finally:
        subscriber.ws.settimeout(10)
