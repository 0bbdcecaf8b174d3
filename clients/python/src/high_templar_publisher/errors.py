"""The one exception publishers raise."""


class PublishError(Exception):
    """A trigger could not be handed to high-templar (server refused it, or unreachable)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        #: The HTTP status of a refusal (``None`` for AMQP and network errors).
        self.status = status
