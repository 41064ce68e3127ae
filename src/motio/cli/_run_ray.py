"""``motio run --ray``: the command's side of running a batch on Ray.

Ray is imported here, inside functions, and only when ``--ray`` is given;
the batch machinery itself is ``motio.batch._ray``.
"""

from __future__ import annotations

import functools
import os

from ..batch._job import OnRay
from ._args import RunArgs
from ._backend import BackendSpec, build_backend
from ._errors import EXIT_BACKEND, EXIT_USAGE, CliError
from ._signals import keep_sigterm

__all__ = ["join_cluster", "leave_cluster", "on_ray"]


def join_cluster(address: str) -> bool:
    """Start or join the cluster ``--ray`` names; True if this process connected.

    Raises:
        CliError: Ray is not installed (exit 2), or the cluster cannot be
            reached (one line, exit 3, within seconds).
    """
    try:
        from ..batch._ray import ClusterUnreachable, connect, disconnect
    except ModuleNotFoundError as exc:
        raise CliError(
            f"--ray needs the '{exc.name}' package: pip install 'motio[ray]'", EXIT_USAGE
        ) from None
    try:
        # ray.init installs SIGTERM handlers of its own (they exit by
        # sys.exit): the command's must stay in place.
        with keep_sigterm():
            return connect(address)
    except ClusterUnreachable as exc:
        raise CliError(str(exc), EXIT_BACKEND) from None
    except KeyboardInterrupt:
        disconnect()  # what the interrupted join had started (a local instance's processes)
        raise


def leave_cluster() -> None:
    from ..batch._ray import disconnect

    disconnect()


def on_ray(args: RunArgs, spec: BackendSpec) -> OnRay:
    """How this run's Ray workers build their backends, and how many there are."""
    env = {}
    if spec.api_key_env and os.environ.get(spec.api_key_env):
        env[spec.api_key_env] = os.environ[spec.api_key_env]
    return OnRay(functools.partial(build_backend, spec), args.ray_workers, env)
