"""high-templar 3.1 as run by ht-bench: settings from the environment, RabbitMQ as the only
trigger source (3.1 has no HTTP trigger endpoint)."""
import os

from high_templar.main import create_app


class Settings:
    API_URL = os.environ["HT31_API_URL"]
    RABBITMQ = {
        "enabled": True,
        "exchange_name": "hightemplar",
        "username": os.environ.get("HT31_RABBITMQ_USER", "guest"),
        "password": os.environ.get("HT31_RABBITMQ_PASSWORD", "guest"),
        "host": os.environ.get("HT31_RABBITMQ_HOST", "127.0.0.1"),
    }


app = create_app(Settings)
