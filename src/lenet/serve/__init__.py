"""The web app: a drawing page at `/` and a JSON prediction API (the `serve` extra).

The page shows the answer as you draw and, in its "Inside the network" panel, what each
layer computes (`POST /api/explain`: feature maps, kernels, an attribution, preprocessing).

    pip install 'lenet[serve]'
    lenet serve [--checkpoint C]... [--host 127.0.0.1] [--port 8000] [--allow-host NAME]...

    from lenet.serve import create_app, serve_command
    app = create_app(["mnist", "fashion-mnist"])    # any ASGI server can run it (on loopback names)

Modules: app.py (routes), upload.py (request body -> image bytes, with limits),
batcher.py (concurrent requests -> one forward pass), inference.py (models, the batch
function), explaining.py (/api/explain's maps, kernels and attribution), hosts.py (the Host header check), docs.py (offline /docs), protocol.py (uvicorn's
h11 with per-connection deadlines and a connection cap), server.py (socket + uvicorn),
static/ (the page: HTML, CSS, JS; no build step; swagger/: Swagger UI for /docs).
"""

from lenet.errors import LenetError

# Without the extra, `lenet serve` should say what to install, not show an ImportError.
EXTRA_MODULES = {"fastapi", "starlette", "uvicorn", "h11", "multipart", "python_multipart", "pydantic"}

try:
    from lenet.serve.app import create_app
    from lenet.serve.server import serve_command
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
        raise
    raise LenetError(f"`lenet serve` needs the serve extra ({exc.name} is missing): "
                     "pip install 'lenet[serve]'") from None

__all__ = ["create_app", "serve_command"]
