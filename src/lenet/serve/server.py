"""`lenet serve`: bind the socket ourselves, load the models, hand both to uvicorn.

    lenet serve                                   # http://127.0.0.1:8000/
    lenet serve --port 0                          # any free port; the URL line says which
    lenet serve --checkpoint mnist --checkpoint fashion-mnist --checkpoint runs/x/model.safetensors

Binding before uvicorn starts turns a busy port into one clear error line, and with
`--port 0` the printed URL is the real one (the browser test relies on that).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from pathlib import Path

import torch
import uvicorn

from lenet.errors import LenetError
from lenet.serve.app import MAX_WAITING, create_app

# Connections plus running requests uvicorn admits; past this it answers 503 (plain text,
# before the app sees the request). A little above MAX_WAITING leaves room for /healthz,
# the page and idle keep-alive connections while predictions are queued, and bounds the
# connections a client can hold open (each with its buffers) however slowly it sends.
LIMIT_CONCURRENCY = MAX_WAITING + 32


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or a LenetError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LenetError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without TIME_WAIT delays
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LenetError(f"port {port} on {host} is already in use; pick another with --port") from None
        raise LenetError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(app, **options) -> uvicorn.Server:
    """uvicorn without access logs (they cost a tenth of the throughput and say little
    here), with the connection count bounded by LIMIT_CONCURRENCY."""
    options = {"limit_concurrency": LIMIT_CONCURRENCY, **options}
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            timeout_graceful_shutdown=3, **options)
    return uvicorn.Server(config)


def serve_command(checkpoints: list[str | Path | None] | None = None, host: str = "127.0.0.1",
                  port: int = 8000) -> int:
    """What `lenet serve` runs: prints the URL, then serves until Ctrl+C (KeyboardInterrupt)."""
    sock = bind_socket(host, port)
    # One torch thread per calling thread: LeNet's ops are too small to split, and on a
    # small machine extra intra-op threads only fight the event loop for the cores
    # (measured: a batch-of-1 forward went from 0.6 ms to 6 ms on a busy 2-core box).
    torch.set_num_threads(1)
    try:
        app = create_app(checkpoints or [None])
        if not is_loopback(host):
            print(f"warning: listening on {host}: reachable from other machines", file=sys.stderr)
        print(f"lenet serve: {url_of(sock)} (models: {', '.join(app.state.models)}; Ctrl+C to stop)",
              flush=True)
        # On Ctrl+C uvicorn shuts down cleanly, then re-raises the KeyboardInterrupt: the
        # CLI turns it into "interrupted" and exit code 130, like every other command.
        make_server(app).run(sockets=[sock])
    finally:
        sock.close()
    return 0
