"""`lenet serve`: bind the socket ourselves, load the models, hand both to uvicorn.

    lenet serve                                   # http://127.0.0.1:8000/
    lenet serve --port 0                          # any free port; the URL line says which
    lenet serve --checkpoint mnist --checkpoint fashion-mnist --checkpoint runs/x/model.safetensors
    lenet serve --host 0.0.0.0 --allow-host digits.lan   # reachable from the network by that name

Binding before uvicorn starts turns a busy port into one clear error line, and with
`--port 0` the printed URL is the real one (the browser test relies on that). uvicorn runs
its h11 protocol with this package's deadlines and connection cap (protocol.py), and the
app answers only to loopback names, the address it listens on and each --allow-host
(hosts.py).
"""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import torch
import uvicorn

from lenet.errors import LenetError
from lenet.serve.app import create_app
from lenet.serve.hosts import is_loopback
from lenet.serve.protocol import ConnectionLimits, guarded_h11

WILDCARDS = {"0.0.0.0", "::", ""}  # listen on every address: no one name to answer to


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


def make_server(app, limits: ConnectionLimits = ConnectionLimits(), **options) -> uvicorn.Server:
    """uvicorn without access logs (they cost a tenth of the throughput and say little
    here), on h11 with per-connection deadlines and a connection cap (protocol.py).

    Not uvicorn's limit_concurrency: it answers 503 to every request once that many
    connections are open, which is what let slow clients take the server down."""
    config = uvicorn.Config(app, http=guarded_h11(limits), log_level="warning", access_log=False,
                            server_header=False, timeout_graceful_shutdown=3, **options)
    return uvicorn.Server(config)


def check_port(port: int) -> None:
    # The OS would take 99999 modulo 65536 and serve on 34463 without a word.
    if not 0 <= port <= 65535:
        raise LenetError(f"port {port} is out of range: use 0-65535 (0 picks a free port)")


def host_names(host: str, allow_hosts: list[str]) -> list[str]:
    """The names the app answers to besides loopback: the address it listens on, unless
    that is every address, and each --allow-host."""
    return ([] if host in WILDCARDS else [host]) + list(allow_hosts)


def reachable(host: str) -> str:
    """The warning for a server other machines can reach: by which names."""
    if host in WILDCARDS:
        return (f"listening on {host}: reachable from other machines, by the names given with "
                "--allow-host (only loopback names are answered otherwise)")
    return f"listening on {host}: reachable from other machines as {host} (more names: --allow-host NAME)"


def serve_command(checkpoints: list[str | Path | None] | None = None, host: str = "127.0.0.1",
                  port: int = 8000, allow_hosts: list[str] | None = None) -> int:
    """What `lenet serve` runs: prints the URL, then serves until Ctrl+C (KeyboardInterrupt).

    The page at `/` (draw or drop a photo: the answer live, and "Inside the network": each
    layer's feature maps, kernels, an attribution overlay and the preprocessing steps),
    `POST /api/predict`, `POST /api/explain` (the same body: the predict object + every
    layer's maps as PNG sprites), `GET /api/models`, `GET /healthz` and offline `/docs`.
    """
    check_port(port)
    sock = bind_socket(host, port)
    # One torch thread per calling thread: LeNet's ops are too small to split, and on a
    # small machine extra intra-op threads only fight the event loop for the cores
    # (measured: a batch-of-1 forward went from 0.6 ms to 6 ms on a busy 2-core box).
    torch.set_num_threads(1)
    try:
        app = create_app(checkpoints or [None], allowed_hosts=host_names(host, allow_hosts or []))
        if not is_loopback(host):
            print(f"warning: {reachable(host)}", file=sys.stderr)
        print(f"lenet serve: {url_of(sock)} (models: {', '.join(app.state.models)}; Ctrl+C to stop)",
              flush=True)
        # On Ctrl+C uvicorn shuts down cleanly, then re-raises the KeyboardInterrupt: the
        # CLI turns it into "interrupted" and exit code 130, like every other command.
        make_server(app).run(sockets=[sock])
    finally:
        sock.close()
    return 0
