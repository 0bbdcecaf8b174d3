"""Fixtures: the real high-templar binary on a free port (with a tiny real HTTP backend), a
real websocket subscriber, and the real RabbitMQ. A missing service fails the test: it is
never skipped."""

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pika
import pytest
import websocket

#: How long a test waits for something that should happen.
WAIT = 10.0
TOKEN = "publisher-test-token"
ROOT = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("HT_BINARY", ROOT / "target" / "debug" / "high-templar"))
AMQP_URL = os.environ.get("HT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ALLOWED = [{"target": "test", "room": "*"}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Bootstrap(BaseHTTPRequestHandler):
    def _answer(self):
        body = json.dumps({"allowed_rooms": ALLOWED}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def backend():
    """A real HTTP backend letting everyone into ``{"target": "test", "room": "*"}``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bootstrap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    server.shutdown()


class Server:
    def __init__(self, port, process):
        self.port = port
        self.process = process
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws/"


def start_server(*args):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} missing: run `cargo build` at the repository root (or set HT_BINARY)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HT_")}
    env.update(RUST_LOG="error", NO_COLOR="1")
    process = subprocess.Popen(
        [str(BINARY), *args, "--listen", f"127.0.0.1:{port}"], env=env
    )
    deadline = time.monotonic() + WAIT
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Server(port, process)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("server did not start listening")
            time.sleep(0.025)


def stop_server(server):
    server.process.terminate()
    server.process.wait(timeout=WAIT)


@pytest.fixture(scope="session")
def server(backend):
    """The real binary with a trigger token, in front of the test backend."""
    server = start_server("--api-url", backend, "--trigger-token", TOKEN)
    yield server
    stop_server(server)


class Subscriber:
    """A real websocket client subscribed to rooms."""

    def __init__(self, server):
        self.ws = websocket.create_connection(server.ws, timeout=WAIT)
        hello = json.loads(self.ws.recv())
        assert hello["is_authorized"] is True, hello

    def subscribe(self, room):
        self.ws.send(json.dumps({"type": "subscribe", "room": room, "requestId": str(uuid.uuid4())}))
        assert json.loads(self.ws.recv()) == {"code": "success"}

    def next_publish(self):
        frame = json.loads(self.ws.recv())
        assert frame["type"] == "publish", frame
        return frame["data"]

    def close(self):
        self.ws.close()


@pytest.fixture
def room():
    """A room no other test uses."""
    return {"target": "test", "room": uuid.uuid4().hex}


@pytest.fixture
def subscriber(server, room):
    client = Subscriber(server)
    client.subscribe(room)
    yield client
    client.close()


class Consumer:
    """A plain AMQP consumer bound to the ``hightemplar`` exchange, as a server node is."""

    def __init__(self):
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.exchange_declare("hightemplar", exchange_type="direct", durable=False)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, "hightemplar", routing_key="*")

    def next_trigger(self):
        for method, properties, body in self.channel.consume(self.queue, inactivity_timeout=WAIT):
            assert method is not None, "no AMQP message in time"
            self.channel.basic_ack(method.delivery_tag)
            return json.loads(body)
        raise AssertionError("consumer ended")

    def close(self):
        self.connection.close()


@pytest.fixture
def consumer():
    try:
        consumer = Consumer()
    except pika.exceptions.AMQPConnectionError as error:
        pytest.fail(f"RabbitMQ not reachable at {AMQP_URL}: {error!r}")
    yield consumer
    consumer.close()
