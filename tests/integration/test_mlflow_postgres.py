"""MLflow on PostgreSQL, the Kubernetes backend, through the same LocalStack as everything else.

Runs against the PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres) when one answers there,
in a fresh database that is dropped afterwards; skips with the reason elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flts_cli.stack import LocalStack, StackConfig, free_ports

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def admin_connection() -> Any:
    """An autocommit connection to the server's `postgres` database, or a skip saying why not."""
    # SQLAlchemy 2.1 maps a plain postgresql:// URI to psycopg 3, so that is the driver MLflow needs.
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg (psycopg[binary]) is not installed: MLflow needs it for PostgreSQL"
    )
    try:
        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3, autocommit=True
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers at {PG_HOST}:{PG_PORT} as {PG_USER}: {str(exc).strip()}")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database; dropped (with any connection left) afterwards."""
    admin = admin_connection()
    name = f"flts_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_mlflow_server_keeps_runs_in_postgresql_when_given_a_postgres_backend_uri(
    postgres_database: str, tmp_path: Path
) -> None:
    import psycopg
    from mlflow.tracking import MlflowClient

    kafka, s3, mlflow = free_ports(3)
    backend = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{postgres_database}"
    config = StackConfig(
        kafka_port=kafka, s3_port=s3, mlflow_port=mlflow, state_dir=tmp_path, backend_store_uri=backend
    )
    assert config.mlflow_backend == backend
    local = LocalStack(config)
    local.start()
    try:
        client = MlflowClient(tracking_uri=config.mlflow_url)
        experiment_id = client.create_experiment("postgres-backend-check")
        run = client.create_run(experiment_id, run_name="GRU", tags={"config_hash": "b" * 64})
        client.log_param(run.info.run_id, "model_type", "GRU")
        client.log_metric(run.info.run_id, "test_rmse", 0.125)
        client.set_terminated(run.info.run_id)
        fetched = client.get_run(run.info.run_id)
    finally:
        local.stop()

    assert fetched.data.metrics == {"test_rmse": 0.125}
    assert fetched.data.params == {"model_type": "GRU"}
    assert not (tmp_path / "mlflow.db").exists(), "no SQLite file: the server used the given backend"
    # The rows are in PostgreSQL itself, not only in the server's memory.
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=postgres_database) as connection:
        rows = connection.execute("SELECT name, status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert rows.fetchall() == [("GRU", "FINISHED")]
        metric = connection.execute(
            "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'test_rmse'", (run.info.run_id,)
        )
        assert metric.fetchall() == [(0.125,)]
