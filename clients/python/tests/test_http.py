"""HttpPublisher against the real server: POST /trigger/ with the bearer token."""

import pytest

from conftest import TOKEN
from high_templar_publisher import HttpPublisher, PublishError, from_settings


def test_publish_reaches_a_websocket_subscriber(server, subscriber, room):
    publisher = HttpPublisher(server.http, token=TOKEN)
    answer = publisher.publish([room], {"id": 1, "text": "saved"})
    assert answer == {"delivered": 1, "triggers": 1}
    assert subscriber.next_publish() == {"id": 1, "text": "saved"}


def test_a_single_room_dict_is_accepted(server, subscriber, room):
    HttpPublisher(server.http + "/trigger/", token=TOKEN).publish(room, "one room")
    assert subscriber.next_publish() == "one room"


def test_a_batch_goes_in_one_request_and_arrives_in_order(server, subscriber, room):
    publisher = HttpPublisher(server.http, token=TOKEN)
    with publisher.batch():
        assert publisher.publish(room, 1) is None  # queued, not sent yet
        publisher.publish(room, 2)
        publisher.publish([{"target": "test", "room": "nobody"}], 3)
    assert [subscriber.next_publish(), subscriber.next_publish()] == [1, 2]
    assert publisher.publish_many([(room, "a"), (room, "b")]) == 2
    assert [subscriber.next_publish(), subscriber.next_publish()] == ["a", "b"]


def test_a_batch_that_raises_sends_nothing(server, subscriber, room):
    publisher = HttpPublisher(server.http, token=TOKEN)
    with pytest.raises(RuntimeError):
        with publisher.batch():
            publisher.publish(room, "never")
            raise RuntimeError("rolled back")
    publisher.publish(room, "after")
    assert subscriber.next_publish() == "after"


def test_a_wrong_token_is_refused(server, room):
    with pytest.raises(PublishError) as refused:
        HttpPublisher(server.http, token="wrong").publish(room, 1)
    assert refused.value.status == 401
    assert "trigger token" in str(refused.value)


def test_bad_rooms_fail_before_sending(server):
    publisher = HttpPublisher(server.http, token=TOKEN)
    for rooms in ([], ["lobby"], [{"a": {"nested": 1}}], [{}]):
        with pytest.raises(ValueError):
            publisher.publish(rooms, 1)
    with pytest.raises(ValueError, match="JSON"):
        publisher.publish({"target": "test"}, object())


def test_an_unreachable_server_raises_publish_error():
    from conftest import free_port

    publisher = HttpPublisher(f"http://127.0.0.1:{free_port()}", token=TOKEN, timeout=2)
    with pytest.raises(PublishError, match="unreachable"):
        publisher.publish({"target": "test"}, 1)


def test_settings_choose_the_transport(server):
    assert isinstance(from_settings({"transport": "http", "url": server.http}), HttpPublisher)
    with pytest.raises(ValueError, match="transport"):
        from_settings({"transport": "carrier-pigeon", "url": "x"})
    with pytest.raises(ValueError, match="url"):
        from_settings({"transport": "http"})
