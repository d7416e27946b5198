"""An in-memory stand-in for ObjectStore's read side, for unit tests of pure logic."""

from __future__ import annotations

import json

from shared.storage import ObjectNotFound


class MemoryStore:
    """Stands in for ObjectStore: objects by key, missing ones raise ObjectNotFound."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(bucket, key)
        return self.objects[key]

    def get_json(self, bucket: str, key: str) -> object:
        return json.loads(self.get_bytes(bucket, key))
