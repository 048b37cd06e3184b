"""``vla-serve``: serve a checkpoint with Ray Serve on this machine (loopback unless told otherwise).

Examples:
    vla-serve --checkpoint=runs/tiny/checkpoint
    vla-serve --config_path=configs/serve/local.yaml --checkpoint=DIR --batching.max_batch_size=8
    VLA_SERVE_API_KEY=secret-key-123 vla-serve --checkpoint=DIR --http.host=0.0.0.0

Then ``PolicyClient("http://127.0.0.1:8000").infer(obs)``, or openpi's
``WebsocketClientPolicy("127.0.0.1", 8000)``. The same config works through Ray Serve's own CLI:
``serve run policy_server.app:build_app checkpoint=DIR``.
"""

import logging
import os
import signal
import threading

import draccus

from policy_server.configs import ServeConfig

logger = logging.getLogger(__name__)


def start_ray(cfg: ServeConfig) -> None:
    """Join ``cfg.ray_address`` or start a local Ray that listens on loopback only, without dashboard."""
    import ray

    if ray.is_initialized():
        return
    if cfg.ray_address:
        ray.init(address=cfg.ray_address)
        return
    # With this set before Ray starts, GCS and raylet bind 127.0.0.1 (DESIGN.md "Dependencies").
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray lowers its workers' priority (nice 15) by default; replicas answer robots in real time, so keep
    # them at the server's own priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(include_dashboard=False, num_cpus=cfg.ray_num_cpus)


def run_server(cfg: ServeConfig, *, blocking: bool = True) -> str:
    """Start Serve's proxy on ``cfg.http`` and deploy the policy application.

    Args:
        cfg: The server config.
        blocking: Wait until SIGINT/SIGTERM, then shut Serve down.

    Returns:
        The base URL of the application.
    """
    from ray import serve

    from policy_server.deployment import build_deployment

    if cfg.checkpoint is None:
        raise ValueError("pass --checkpoint=DIR (a directory written by save_pretrained)")
    if cfg.http.host not in ("127.0.0.1", "localhost", "::1") and cfg.resolved_api_key() is None:
        logger.warning(
            "serving on %s without an API key: anyone who reaches this port can move your robot; set %s",
            cfg.http.host,
            cfg.api_key_env,
        )
    stop = threading.Event()
    if blocking:  # installed first, so that Ctrl-C during start-up also ends in a clean shutdown
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    start_ray(cfg)
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_deployment(cfg), name=cfg.app_name, route_prefix=cfg.http.route_prefix)
    prefix = cfg.http.route_prefix.rstrip("/")
    url = f"http://{cfg.http.host}:{cfg.http.port}{prefix}"
    logger.info(
        "serving %s at %s (websocket: ws://%s:%d%s)",
        cfg.checkpoint,
        url,
        cfg.http.host,
        cfg.http.port,
        prefix or "/",
    )
    if blocking:
        stop.wait()
        logger.info("shutting down")
        serve.shutdown()
    return url


@draccus.wrap()
def serve_main(cfg: ServeConfig) -> None:
    """Serve ``cfg.checkpoint`` until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(cfg)


def main() -> None:
    """Console-script entry point (``vla-serve``)."""
    serve_main()


if __name__ == "__main__":
    main()
