"""dermkit serve: a REST API and a web page for single-image prediction (FastAPI on uvicorn)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from dermkit.commands.common import err_console


def register(app: typer.Typer, groups: dict) -> None:
    app.command("serve")(serve)


def serve(
    model: Path = typer.Option(..., help="Model folder of any method (RUN/model): supervised, zero-shot, probe, "
                                         "prompt learning, fusion, CBM..."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default answers this machine only; "
                                               "0.0.0.0 exposes the server to the network (put it behind a proxy)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, min=1, max=64, help="Server processes, each with its own model instance "
                                                       "(requests within one process are queued and batched)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    max_upload_mb: float = typer.Option(10.0, min=0.01, help="Largest request body in MiB (bigger: 413)."),
    max_pixels: int = typer.Option(25_000_000, min=1024, help="Largest image in pixels (width x height), checked "
                                                              "before decoding: refuses decompression bombs."),
    min_side: int = typer.Option(32, min=1, help="Smallest accepted shorter side in pixels."),
    max_aspect: float = typer.Option(8.0, min=1.0, help="Largest accepted aspect ratio (longer / shorter side)."),
    max_batch: int = typer.Option(16, min=1, help="Requests run together in one forward pass (1: batching off)."),
    batch_wait_ms: float = typer.Option(10.0, min=0.0, help="How long a request waits for others to batch with."),
    max_queue: int = typer.Option(64, min=1, help="Requests that may wait; more are refused with 503."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds a request may take, upload to answer (504)."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical | error | warning | info | debug."),
) -> None:
    """Serve a model: web page at /, REST API at /api/predict, /api/rank, /api/model, /health, docs at /docs.

    Research use only: the page and every answer say that this is not a medical device.
    Example: dermkit serve --model runs/benchmark/model --port 8000, then open http://127.0.0.1:8000
    """
    import uvicorn

    from dermkit.serve.uploads import ServeLimits

    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels, min_side=min_side,
                         max_aspect=max_aspect, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                         max_queue=max_queue, timeout_s=timeout)
    if workers == 1:
        from dermkit.serve.app import create_app

        app = create_app(model, limits, device=device)  # a bad folder fails here, before binding the port
        err_console.print(f"serving {app.state.predictor.name} ({app.state.predictor.method}) on http://{host}:{port} "
                      "(research use only, not a medical device)")
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    from dermkit.methods import load_predictor

    load_predictor(model, device="cpu")  # check the folder once before starting the workers
    os.environ["DERMKIT_SERVE_CONFIG"] = json.dumps({"model": str(model.resolve()), "device": device,
                                                     "limits": limits.to_dict()})
    err_console.print(f"serving {model} with {workers} worker processes on http://{host}:{port}")
    uvicorn.run("dermkit.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
