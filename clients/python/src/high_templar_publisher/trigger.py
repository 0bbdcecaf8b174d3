"""Building and checking trigger bodies before they leave the process."""

import json


def make_trigger(rooms, data):
    """The trigger object for ``rooms`` (a room dict or a list of them) and ``data``.

    Checked here, so a mistake fails at the call site with a clear message, not as a 400 (HTTP)
    or a silently dropped message (AMQP) later.
    """
    if isinstance(rooms, dict):
        rooms = [rooms]
    if not isinstance(rooms, (list, tuple)) or not rooms:
        raise ValueError("rooms: a room (dict) or a non-empty list of rooms")
    for i, room in enumerate(rooms):
        if not isinstance(room, dict) or not room:
            raise ValueError(f"rooms[{i}]: a room is a non-empty dict, got {room!r}")
        for key, value in room.items():
            if not isinstance(key, str):
                raise ValueError(f"rooms[{i}]: keys are strings, got {key!r}")
            if not (value is None or isinstance(value, (str, int, float, bool))):
                raise ValueError(f"rooms[{i}][{key!r}]: values are scalars, got {value!r}")
    return {"rooms": list(rooms), "data": data}


def encode(triggers):
    """JSON bytes of one trigger (a dict) or a batch (a list); ``data`` must be JSON-able."""
    try:
        return json.dumps(triggers, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise ValueError(f"data: not JSON-serializable: {error}") from error
