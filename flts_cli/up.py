"""`flts up` / `flts down`: the embedded infrastructure in the foreground or detached."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from flts_cli.stack import (
    LocalStack,
    StackConfig,
    StackError,
    StackInterrupted,
    running_from_state,
    stop_from_state,
)


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="start Kafka, S3 and MLflow on 127.0.0.1")
    add_stack_arguments(up)
    up.add_argument("--detach", action="store_true", help="start, print, and return")
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="stop a stack started with `flts up --detach`")
    down.add_argument("--state-dir", type=Path, default=Path(".flts"))
    down.set_defaults(func=cmd_down)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="MLflow backend (default: SQLite in the state dir; e.g. postgresql://...)",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".flts"))


def config_from_args(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        kafka_port=args.kafka_port,
        s3_port=args.s3_port,
        mlflow_port=args.mlflow_port,
        backend_store_uri=args.backend_store_uri,
        state_dir=args.state_dir,
    )


def cmd_up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    stack = LocalStack(config_from_args(args), abort=stop)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = running_from_state(args.state_dir)
    if running:
        # Overwriting its state file would leave that stack running with no way to `flts down` it.
        print(
            f"flts up: a stack started by `flts up` ({', '.join(running)}) is still running from "
            f"{args.state_dir}; stop it (`flts down --state-dir {args.state_dir}` if detached) "
            f"or choose another --state-dir",
            file=sys.stderr,
        )
        return 1
    try:
        stack.start()
    except StackInterrupted as exc:
        print(f"flts up: {exc}; stopped what had started", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"flts up: {exc}", file=sys.stderr)
        return 1
    state = stack.write_state()
    if stack.retired_mlflow_db is not None:
        print(
            f"flts up: moved the previous stack's MLflow database to {stack.retired_mlflow_db}: "
            f"its artifacts lived in the S3 server's memory and are gone, so this stack starts empty"
        )
    for name, url in stack.endpoints().items():
        print(f"{name:>6}: {url}")
    print(f"   env: source {state.with_name('stack.env')}")
    if args.detach:
        return 0
    print("running; Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(1.0):
            dead = [m.name for m, p in stack.processes if p is not None and p.poll() is not None]
            if dead:
                print(f"flts up: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
    finally:
        stack.stop()
        state.unlink(missing_ok=True)
        state.with_name("stack.env").unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    names = stop_from_state(args.state_dir)
    print(f"stopped: {', '.join(names)}" if names else "no detached stack found")
    return 0
