"""Publishes triggers to RabbitMQ the way a high-templar 3.1 backend does, for ht-bench.

Reads one trigger per line on stdin; the token __TS__ is replaced by the current time in
microseconds since the epoch just before publishing, so trigger-to-client latency includes
RabbitMQ but not this script's queueing. Prints "ready" once connected.
"""
import asyncio
import sys
import time

import aio_pika


async def main(url):
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    # Declared exactly as high-templar 3.1 declares it (direct, not durable).
    exchange = await channel.declare_exchange("hightemplar", aio_pika.ExchangeType.DIRECT)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        body = line.replace(b"__TS__", str(time.time_ns() // 1000).encode())
        await exchange.publish(aio_pika.Message(body), routing_key="*")
    await connection.close()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1/"))
