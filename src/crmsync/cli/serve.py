"""`crmsync serve` and `crmsync worker`."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer

from crmsync.cli.common import ConfigOpt, checked_connectors, refuse_if_invalid

log = logging.getLogger("crmsync.service")

PollOpt = Annotated[
    float,
    typer.Option(min=0.01, max=60, help="seconds an idle worker waits before it looks again "
                 "(work queued in the same process wakes it at once)"),
]


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or exit 2 saying why (address taken, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
        # Accepted sockets inherit it: small answers go out without a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        typer.echo(f"error: cannot listen on {host}:{port}: {reason}", err=True)
        raise typer.Exit(2) from None


def serve(
    config: ConfigOpt = Path("crmsync.yaml"),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="worker threads in this process")] = 1,
    poll: PollOpt = 0.2,
) -> None:
    """Run the HTTP API, the scheduler and a worker in one process."""
    import uvicorn

    from crmsync.api.app import create_app
    from crmsync.service.context import ServiceContext
    from crmsync.service.scheduler import Scheduler
    from crmsync.service.worker import Worker

    # A service must not start on a broken config (exit 2) and then fail every message.
    refuse_if_invalid(config)
    sock = _listen(host, port)  # before anything starts: a taken port is said plainly
    port = int(sock.getsockname()[1])
    ctx = ServiceContext.open(config, reuse=checked_connectors(config))
    stop = threading.Event()
    threads = [
        threading.Thread(target=Scheduler(ctx).run, args=(stop,), name="scheduler", daemon=True)
    ]
    for i in range(max(1, workers)):
        threads.append(
            threading.Thread(
                target=Worker(ctx, poll_s=poll).run, args=(stop,), name=f"worker-{i}",
                daemon=True,
            )
        )
    for t in threads:
        t.start()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), host=host, port=port, log_level="warning")
    )
    # uvicorn in a thread: then it installs no signal handlers of its own (it
    # would re-raise SIGTERM after its shutdown and kill the process before the
    # worker finishes its batch); this thread owns SIGINT/SIGTERM instead.
    api = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
    )
    _stop_on_signals(stop)
    api.start()
    typer.echo(f"crmsync serving on http://{host}:{port} (API, scheduler, {workers} worker)")
    try:
        while not stop.wait(0.5):
            if not api.is_alive():  # the API could not start (port taken, ...)
                raise typer.Exit(1)
    finally:
        stop.set()
        ctx.wake.set()  # idle workers notice the stop now
        server.should_exit = True
        api.join(timeout=30)
        for t in threads:
            t.join(timeout=30)
        ctx.close()


def worker(config: ConfigOpt = Path("crmsync.yaml"), poll: PollOpt = 0.2) -> None:
    """Run a worker only (scale out: any number, on any machine, with PostgreSQL state)."""
    from crmsync.service.context import ServiceContext
    from crmsync.service.worker import Worker

    # A service must not start on a broken config (exit 2) and then fail every message.
    refuse_if_invalid(config)
    ctx = ServiceContext.open(config, reuse=checked_connectors(config))
    stop = threading.Event()
    _stop_on_signals(stop)
    typer.echo(f"crmsync worker {ctx.engine.worker_id} started")
    try:
        Worker(ctx, poll_s=poll).run(stop)
    finally:
        ctx.close()


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
