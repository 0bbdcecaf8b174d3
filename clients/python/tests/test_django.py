"""The Django helper: publish_on_commit pushes after a commit and never after a rollback."""

import django
import pytest
from django.conf import settings

from conftest import AMQP_URL, TOKEN

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

from django.db import connection, transaction  # noqa: E402 - needs the settings above
from django.test import override_settings  # noqa: E402

from high_templar_publisher.django import publish_on_commit  # noqa: E402


@pytest.fixture(autouse=True)
def table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS note (id INTEGER PRIMARY KEY, text TEXT)")
        cursor.execute("DELETE FROM note")


def save_note(text, room):
    """What a model save with a push looks like: write, then publish once committed."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO note (text) VALUES (%s)", [text])
        note_id = cursor.lastrowid
    publish_on_commit([room], {"id": note_id, "text": text})
    return note_id


def count_notes():
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM note")
        return cursor.fetchone()[0]


@pytest.fixture
def http_settings(server):
    with override_settings(HIGH_TEMPLAR={"transport": "http", "url": server.http, "token": TOKEN}):
        yield


def test_a_commit_publishes(http_settings, subscriber, room):
    with transaction.atomic():
        note_id = save_note("committed", room)
    assert subscriber.next_publish() == {"id": note_id, "text": "committed"}


def test_a_rollback_never_publishes(http_settings, subscriber, room):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            save_note("rolled back", room)
            raise RuntimeError("validation failed")
    assert count_notes() == 0
    with transaction.atomic():
        save_note("committed later", room)
    # Publishes arrive in order on one connection: the first one is the committed save.
    assert subscriber.next_publish()["text"] == "committed later"
    assert count_notes() == 1


def test_a_rolled_back_savepoint_drops_only_its_publish(http_settings, subscriber, room):
    with transaction.atomic():
        save_note("outer", room)
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                save_note("inner", room)
                raise RuntimeError("inner failed")
    assert subscriber.next_publish()["text"] == "outer"
    with transaction.atomic():
        save_note("next", room)
    assert subscriber.next_publish()["text"] == "next"


def test_a_failed_publish_after_commit_does_not_fail_the_save(room, caplog):
    from conftest import free_port

    dead = {"transport": "http", "url": f"http://127.0.0.1:{free_port()}", "timeout": 2}
    with override_settings(HIGH_TEMPLAR=dead):
        with transaction.atomic():
            save_note("kept", room)
    assert count_notes() == 1
    assert "publish after commit failed" in caplog.text


def test_amqp_transport_publishes_on_commit(consumer):
    with override_settings(HIGH_TEMPLAR={"transport": "amqp", "url": AMQP_URL}):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                save_note("rolled back", {"target": "test", "room": "amqp"})
                raise RuntimeError("no")
        with transaction.atomic():
            save_note("committed", {"target": "test", "room": "amqp"})
    assert consumer.next_trigger()["data"]["text"] == "committed"


def test_bad_rooms_fail_at_the_call_site(http_settings):
    with pytest.raises(ValueError):
        with transaction.atomic():
            publish_on_commit(["not a room"], 1)
