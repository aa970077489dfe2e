"""Run the ASGI app on uvicorn (uvloop and httptools where available, with the short way for
predictions of `cpmai.serving.fastpath`)."""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from typing import Any

from cpmai.serving.config import CONFIG_ENV, ServeConfig

GRACEFUL_SECONDS = 30
HTTP_PROTOCOL = "cpmai.serving.fastpath:InferenceHttpProtocol"
SWITCH_INTERVAL_S = 0.0005
"""The interpreter's thread switch interval in a server process (Python's default is 5 ms)."""


def tune_process() -> None:
    """Tune the interpreter of a process that serves, once, where it starts: `serve` for the
    app it was handed, uvicorn's factories (`create_app_from_env`,
    `cpmai.serving.router.create_router_from_env`) in each worker process.

    - The thread switch interval drops from 5 ms to `SWITCH_INTERVAL_S`: the event loop shares
      the interpreter with the prediction log's writer thread and the model's worker thread, and
      a thread that holds the interpreter may keep it for a whole interval before the loop gets
      it back; at 5 ms that would be milliseconds added to requests waiting on the loop.
    - `gc.freeze()`: what is loaded by then (the model, the libraries) lives as long as the
      process, so the collector's full collections need not walk it again and again.

    The prediction log pauses the collector only around its own bulk work
    (`cpmai.predlog.collector`); nothing else here changes the collector."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """The exact keyword arguments given to `uvicorn.run` (tests assert on them)."""
    fast_loop = importlib.util.find_spec("uvloop") is not None
    fast_http = importlib.util.find_spec("httptools") is not None
    return {
        "factory": True,
        "host": config.host,
        "port": config.port,
        "workers": config.workers,
        "loop": "uvloop" if fast_loop else "asyncio",
        # httptools, with the short way for predictions (cpmai.serving.fastpath)
        "http": HTTP_PROTOCOL if fast_http else "h11",
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # nothing here reads X-Forwarded-*: skip the middleware
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
    }


def serve(
    config: ServeConfig,
    app: Any = None,
    factory: str = "cpmai.serving.app:create_app_from_env",
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; in-flight requests finish, the prediction
    log is flushed.

    With one worker, an app already built (`app`) is served as is, so the model is loaded once.
    Several workers each build their own from $CPMAI_SERVE_CONFIG (uvicorn's `factory`)."""
    import uvicorn

    options = uvicorn_options(config)
    if app is not None and config.workers == 1:
        tune_process()
        options["factory"] = False
        uvicorn.run(app, **options)
        return
    os.environ[CONFIG_ENV] = config.to_env()
    uvicorn.run(factory, **options)
