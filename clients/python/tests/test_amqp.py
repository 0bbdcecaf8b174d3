"""AmqpPublisher against the real RabbitMQ: exchange ``hightemplar``, routing key ``*``."""

import subprocess
import uuid

from conftest import AMQP_URL, WAIT
from high_templar_publisher import AmqpPublisher, from_settings


def test_publish_reaches_a_consumer_bound_to_the_exchange(consumer):
    publisher = AmqpPublisher(AMQP_URL)
    try:
        publisher.publish([{"target": "test", "room": "amqp"}], {"id": 7})
        publisher.publish_many([({"target": "test", "room": "a"}, 1), ({"target": "test", "room": "b"}, 2)])
    finally:
        publisher.close()
    assert consumer.next_trigger() == {"rooms": [{"target": "test", "room": "amqp"}], "data": {"id": 7}}
    assert consumer.next_trigger() == {"rooms": [{"target": "test", "room": "a"}], "data": 1}
    assert consumer.next_trigger() == {"rooms": [{"target": "test", "room": "b"}], "data": 2}


def _close_broker_side(connection_name):
    """Has RabbitMQ itself close the publisher's connection, as a broker restart would."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--quiet",
         "--no-table-headers"],
        check=True, capture_output=True, text=True, timeout=WAIT * 3,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if connection_name in line]
    assert len(pids) == 1, listing
    subprocess.run(
        ["rabbitmqctl", "close_connection", pids[0], "test: broker closed it"],
        check=True, capture_output=True, timeout=WAIT * 3,
    )


def test_publish_reconnects_after_the_broker_closed_the_connection(consumer, caplog):
    name = f"ht-publisher-test-{uuid.uuid4().hex}"
    publisher = from_settings({"transport": "amqp", "url": AMQP_URL, "connection_name": name})
    try:
        publisher.publish({"target": "test", "room": "r"}, "before")
        assert consumer.next_trigger()["data"] == "before"
        _close_broker_side(name)
        publisher.publish({"target": "test", "room": "r"}, "after")
        assert consumer.next_trigger()["data"] == "after"
        assert "RabbitMQ connection lost" in caplog.text
    finally:
        publisher.close()
