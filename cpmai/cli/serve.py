"""`cpmai serve`: one packaged version over HTTP (Open Inference Protocol v2 and MLflow)."""

import os
from typing import Annotated

import typer

from cpmai.cli.options import argument, flag, option
from cpmai.cli.output import OPTIONS, info, warn


def serve(
    ref: Annotated[
        str,
        argument("NAME, NAME@VERSION or NAME@ENV (the version live there); default: the latest."),
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    workers: Annotated[
        int | None, option("Server processes (default: serving.workers).", min=1, max=64)
    ] = None,
    token: Annotated[
        str | None,
        option(
            "Require `Authorization: Bearer TOKEN` on infer and "
            "invocations (default: $CPMAI_TOKEN)."
        ),
    ] = None,
    runtime: Annotated[
        str | None, option("Force sklearn or onnx (default: as decided at package time).")
    ] = None,
    env: Annotated[
        str, typer.Option(help="Environment name for the prediction log folder (logs/NAME/ENV).")
    ] = "default",
    no_log: Annotated[bool, flag("--no-log", "Do not write the prediction log.")] = False,
    max_batch_size: Annotated[
        int | None,
        option(
            "Most rows per model call (default: serving.max_batch_size; 1 turns batching off).",
            min=1,
        ),
    ] = None,
    max_latency_ms: Annotated[
        float | None,
        option(
            "How long an idle server waits to fill a batch (default: serving.max_latency_ms).",
            min=0,
        ),
    ] = None,
) -> None:
    """Serve a packaged model over HTTP in the foreground (Ctrl-C or SIGTERM stops it: in-flight
    requests finish, the prediction log is flushed).

    Endpoints: /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready],
    POST /v2/models/NAME[/versions/V]/infer, POST /invocations, /ping, /health, /version,
    /metrics. Only artifacts whose bytes match the ledger are loaded (exit 5 otherwise).
    """
    import ipaddress
    import socket

    from cpmai.artifacts import open_artifact
    from cpmai.errors import UsageError
    from cpmai.refs import resolve
    from cpmai.serving.app import build_app
    from cpmai.serving.config import ServeConfig
    from cpmai.serving.server import serve as run
    from cpmai.settings import resolve_home

    if runtime not in (None, "sklearn", "onnx"):
        raise UsageError(f"--runtime {runtime!r}: expected sklearn or onnx")
    home = resolve_home(OPTIONS.home)
    target = resolve(home, ref)
    artifact = open_artifact(home, target.name, target.version)
    settings = artifact.manifest().serving
    config = ServeConfig(
        home=str(home),
        name=target.name,
        version=target.version,
        env=env,
        host=host,
        port=port,
        workers=workers or settings.workers,
        token=token or os.environ.get("CPMAI_TOKEN") or None,
        runtime=runtime,
        prediction_log=not no_log,
    ).for_artifact(artifact)
    if max_batch_size is not None:
        config.max_batch_rows = max_batch_size
    if max_latency_ms is not None:
        config.max_latency_ms = max_latency_ms
    app = build_app(
        config, artifact
    )  # load once here: a model that cannot load fails before binding
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and config.token is None:
        warn(f"listening on {host} without a token: anyone who can reach it can call the model")
    base = f"http://{host}:{port}"
    info(
        f"serving {target.name} {target.version} ({app.predictor.flavor}) on {base}  "
        f"workers={config.workers} batch≤{config.max_batch_rows} rows"
        f"{'  token required' if config.token else ''}"
    )
    info(f"  OIP v2   POST {base}/v2/models/{target.name}/infer")
    info(f"  MLflow   POST {base}/invocations")
    info(f"  metrics  GET  {base}/metrics")
    run(config, app)
