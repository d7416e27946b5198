"""The object store (MinIO in Kubernetes, a local S3 server elsewhere), spoken to with boto3."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.settings.base import BaseServiceSettings

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported by the Parquet methods only: the CLI (`flts up`, `flts down`) uses this
# module for buckets and would otherwise pay for importing pandas on every command.

_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


class ObjectNotFound(LookupError):
    """The bucket or key does not exist."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"object s3://{bucket}/{key} does not exist")
        self.bucket = bucket
        self.key = key


class ObjectStore:
    """Bytes, JSON and Parquet in and out of S3-compatible storage."""

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        self.endpoint_url = endpoint_url
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    @classmethod
    def from_settings(cls, settings: BaseServiceSettings) -> ObjectStore:
        return cls(
            endpoint_url=settings.MLFLOW_S3_ENDPOINT_URL,
            access_key=settings.AWS_ACCESS_KEY_ID.get_secret_value(),
            secret_key=settings.AWS_SECRET_ACCESS_KEY.get_secret_value(),
            region=settings.AWS_DEFAULT_REGION,
        )

    @property
    def client(self) -> Any:
        return self._client

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _error_code(exc) not in _MISSING_CODES:
                raise
            try:
                self._client.create_bucket(Bucket=bucket)
            except ClientError as create_exc:
                if _error_code(create_exc) not in {
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                }:
                    raise

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "") -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise ObjectNotFound(bucket, key) from None
            raise
        # boto3 ships no type information: the body's read() is declared here as what S3 returns.
        data: bytes = response["Body"].read()
        return data

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def size(self, bucket: str, key: str) -> int:
        try:
            return int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise ObjectNotFound(bucket, key) from None
            raise

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise ObjectNotFound(bucket, prefix) from None
            raise
        return keys

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        body = json.dumps(value, sort_keys=True, indent=2, default=str).encode("utf-8")
        self.put_bytes(bucket, key, body, content_type="application/json")

    def get_json(self, bucket: str, key: str) -> Any:
        return json.loads(self.get_bytes(bucket, key))

    def put_parquet(self, bucket: str, key: str, frame: pd.DataFrame) -> int:
        """Write `frame` (index included) as Parquet; return the object size in bytes."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, engine="pyarrow", index=True)
        data = buffer.getvalue()
        self.put_bytes(bucket, key, data, content_type="application/vnd.apache.parquet")
        return len(data)

    def get_parquet(self, bucket: str, key: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.get_bytes(bucket, key)), engine="pyarrow")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
