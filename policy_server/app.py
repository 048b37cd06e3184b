"""Ray Serve application builder: the entry point for ``serve run`` and Serve config files.

Examples:
    serve run policy_server.app:build_app checkpoint=runs/tiny/checkpoint batching.max_batch_size=8

    # serve_config.yaml (``serve deploy serve_config.yaml`` / ``serve run serve_config.yaml``)
    # applications:
    #   - name: vla_policy
    #     route_prefix: /
    #     import_path: policy_server.app:build_app
    #     args: {config_path: configs/serve/local.yaml, checkpoint: runs/tiny/checkpoint}

``args`` are ``key=value`` pairs with dotted keys of :class:`policy_server.configs.ServeConfig`, plus an
optional ``config_path`` (a YAML preset, as ``vla-serve --config_path`` takes). They are parsed with
draccus into the same dataclass the CLI uses, so both paths validate the same way.
"""

from __future__ import annotations

from typing import Any

import draccus

from policy_server.configs import ServeConfig

__all__ = ["build_app", "parse_args"]


def parse_args(args: dict[str, Any]) -> ServeConfig:
    """Parse ``serve run``-style ``key=value`` args into a :class:`ServeConfig`.

    Args:
        args: Mapping of dotted field names (``batching.max_batch_size``) to values; ``config_path``
            names a YAML preset the other keys override.

    Returns:
        The validated config.

    Raises:
        ValueError: For an unknown key or a value that fails validation (the message names it).
    """
    args = dict(args)
    config_path = args.pop("config_path", None)
    argv = []
    for key, value in args.items():
        if value is None:
            value = "null"
        elif isinstance(value, bool):
            value = str(value).lower()
        argv.append(f"--{key}={value}")
    try:
        return draccus.parse(ServeConfig, config_path=config_path, args=argv, exit_on_error=False)
    except (Exception, SystemExit) as e:  # draccus wraps our __post_init__ errors; surface the real reason
        cause = e.__cause__ or e.__context__ or e
        raise ValueError(f"invalid policy server args {argv} (config_path={config_path}): {cause}") from None


def build_app(args: dict[str, Any]) -> Any:
    """Build the Ray Serve application for ``serve run policy_server.app:build_app k=v ...``.

    Args:
        args: See :func:`parse_args`.

    Returns:
        The bound ``ray.serve.Application``.
    """
    from policy_server.deployment import build_deployment

    return build_deployment(parse_args(args))
