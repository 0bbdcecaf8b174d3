"""Publishing over HTTP: ``POST {url}/trigger/`` with a bearer token (standard library only)."""

import json
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager

from .errors import PublishError
from .trigger import encode, make_trigger

#: The server's default body limit is 1 MiB and at most 10,000 triggers per request; batches
#: are sent in chunks of this many so one large ``batch()`` never hits the count limit.
MAX_BATCH = 1000


class HttpPublisher:
    """Sends triggers to ``POST /trigger/`` of one server (or a load balancer in front).

    ``url`` is the server's base URL (``http://127.0.0.1:8080``) or the full trigger URL.
    Thread-safe: each call is one request; :meth:`batch` buffers per thread.
    """

    def __init__(self, url, token=None, timeout=10.0):
        url = url.rstrip("/")
        self.url = url + "/" if url.endswith("/trigger") else url + "/trigger/"
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def publish(self, rooms, data):
        """Publishes one trigger; returns the server's summary (``{"delivered": n, ...}``).

        Inside :meth:`batch`, the trigger is queued instead and ``None`` is returned.
        """
        trigger = make_trigger(rooms, data)
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(trigger)
            return None
        return self._post(encode(trigger))

    def publish_many(self, triggers):
        """Publishes ``[(rooms, data), ...]`` in as few requests as possible (lists of up to
        :data:`MAX_BATCH`); returns the summed ``delivered`` count."""
        bodies = [make_trigger(rooms, data) for rooms, data in triggers]
        return self._post_batch(bodies)

    @contextmanager
    def batch(self):
        """Collects every :meth:`publish` in the block and sends them together at its end (not
        at all if the block raises)."""
        if getattr(self._local, "buffer", None) is not None:
            yield self  # nested: the outer batch sends
            return
        self._local.buffer = []
        try:
            yield self
            triggers = self._local.buffer
        finally:
            self._local.buffer = None
        self._post_batch(triggers)

    def _post_batch(self, triggers):
        delivered = 0
        for start in range(0, len(triggers), MAX_BATCH):
            answer = self._post(encode(triggers[start : start + MAX_BATCH]))
            delivered += answer.get("delivered", 0)
        return delivered

    def _post(self, body):
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise PublishError(
                f"{self.url} refused the trigger: {error.code} {_server_message(error)}",
                status=error.code,
            ) from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise PublishError(f"{self.url} unreachable: {error}") from error


def _server_message(error):
    try:
        return json.loads(error.read()).get("error", "")
    except (ValueError, AttributeError, OSError):
        return ""
