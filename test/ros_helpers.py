"""Helpers for tests that touch ROS 2 (rclpy, DDS, the colcon install space).

Every test that creates a ROS context must isolate it from other processes on the machine:

* in this process: ``with ros_context() as ros:`` (or the ``ros_ctx`` fixture), which sets the
  environment *before* ``rclpy.init`` (DDS reads it when the participant is created) and shuts the
  context down afterwards;
* in a subprocess: ``env=ros_env()`` (or ``ros.env`` to share the in-process domain), or
  ``install_env()`` for processes that use the colcon install space (generated ``vggt4d_ros.msg``,
  the executables in ``lib/vggt4d_ros``).

The isolation: discovery limited to localhost, a random ``ROS_DOMAIN_ID`` in 1..100 per call,
``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``, and ``ROS_HOME`` / ``ROS_LOG_DIR`` in a temporary
directory (rclpy would otherwise write logs to ``~/.ros/log``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from vggt4d_ros.ros import install_space

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vggt4d_ros"

#: Environment variables that ros_env() sets.
ROS_ISOLATION_VARS = (
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_DOMAIN_ID",
    "RMW_IMPLEMENTATION",
    "ROS_HOME",
    "ROS_LOG_DIR",
)
#: Variables that would undo the isolation if inherited.
_CONFLICTING_VARS = ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE",
                     "FASTDDS_DEFAULT_PROFILES_FILE", "ROS_DISCOVERY_SERVER")

_ros_home: str | None = None
_rng = random.SystemRandom()


def _session_ros_home() -> str:
    """One temporary ROS_HOME per test session, removed at interpreter exit."""
    global _ros_home
    if _ros_home is None:
        _ros_home = tempfile.mkdtemp(prefix="vggt4d_ros_test_home_")
        atexit.register(shutil.rmtree, _ros_home, True)
    return _ros_home


def random_domain_id() -> int:
    """A ROS domain id in 1..100."""
    return _rng.randint(1, 100)


def ros_env(domain_id: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that creates a ROS 2 context, isolated as described above.

    Args:
        domain_id: ROS domain; a fresh random one in 1..100 when ``None``.
        base: environment to start from (default ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    for var in _CONFLICTING_VARS:
        env.pop(var, None)
    home = _session_ros_home()
    env.update(
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=str(random_domain_id() if domain_id is None else int(domain_id)),
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        ROS_HOME=home,
        ROS_LOG_DIR=os.path.join(home, "log"),
    )
    return env


# ------------------------------------------------------------------------------------------------
# The colcon install space
# ------------------------------------------------------------------------------------------------


def install_prefix() -> Path:
    """Install prefix of this package: ``$VGGT4D_ROS_INSTALL`` or ``<repo>/install/vggt4d_ros``."""
    env = os.environ.get("VGGT4D_ROS_INSTALL")
    return Path(env) if env else REPO_ROOT / "install" / PACKAGE


def install_site_packages(prefix: Path | None = None) -> Path:
    """``<prefix>/lib/pythonX.Y/site-packages`` for the running Python."""
    return install_space.install_site_packages(install_prefix() if prefix is None else prefix)


def require_install_space(prefix: Path | None = None) -> Path:
    """The install prefix, or an AssertionError saying how to build it."""
    prefix = install_prefix() if prefix is None else prefix
    marker = prefix / "share" / PACKAGE / "package.xml"
    assert marker.is_file(), (
        f"{marker} is missing: build the package first with `bash tools/setup_env.sh` (or `make test`)"
    )
    return prefix


def install_env(domain_id: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`ros_env` plus what a process needs to use the install space without sourcing
    ``install/setup.bash`` (the same environment ``vggt4d replay`` gives the node: see
    :func:`vggt4d_ros.ros.install_space.node_environment`)."""
    return install_space.node_environment(require_install_space(), ros_env(domain_id, base))


def use_install_space_in_process(prefix: Path | None = None) -> Path:
    """Make the generated ``vggt4d_ros.msg`` importable in *this* process (the source tree's
    ``vggt4d_ros`` has no ``msg``), through :func:`vggt4d_ros.ros.install_space.import_package_messages`. Idempotent."""
    prefix = require_install_space(prefix)
    assert install_space.import_package_messages(prefix), f"cannot import {PACKAGE}.msg from {prefix}"
    return prefix


# ------------------------------------------------------------------------------------------------
# In-process rclpy
# ------------------------------------------------------------------------------------------------


@dataclass
class RosTestContext:
    """What :func:`ros_context` yields: the initialised context and the environment it used (pass
    ``env`` to subprocesses that must share the domain)."""

    context: Any
    env: dict[str, str]
    domain_id: int
    nodes: list = field(default_factory=list)

    def node(self, name: str, **kwargs: Any):
        """Create an rclpy node in this context; it is destroyed when the context closes."""
        import rclpy

        n = rclpy.create_node(name, context=self.context, **kwargs)
        self.nodes.append(n)
        return n

    def executor(self):
        """A SingleThreadedExecutor in this context."""
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor(context=self.context)


@contextlib.contextmanager
def ros_context(domain_id: int | None = None) -> Iterator[RosTestContext]:
    """Initialise rclpy's default context with the isolated environment, and shut it down after.

    The isolation variables are put into ``os.environ`` before ``rclpy.init`` and restored after.
    """
    import rclpy

    env = ros_env(domain_id)
    saved = {k: os.environ.get(k) for k in ROS_ISOLATION_VARS + _CONFLICTING_VARS}
    for var in _CONFLICTING_VARS:
        os.environ.pop(var, None)
    for var in ROS_ISOLATION_VARS:
        os.environ[var] = env[var]
    os.makedirs(env["ROS_LOG_DIR"], exist_ok=True)
    domain = int(env["ROS_DOMAIN_ID"])
    rclpy.init(domain_id=domain)
    ctx = RosTestContext(context=rclpy.get_default_context(), env=env, domain_id=domain)
    try:
        yield ctx
    finally:
        for n in ctx.nodes:
            with contextlib.suppress(Exception):
                n.destroy_node()
        rclpy.try_shutdown()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


@pytest.fixture
def ros_ctx() -> Iterator[RosTestContext]:
    """Fixture form of :func:`ros_context` (import it into the test module to use it)."""
    with ros_context() as ctx:
        yield ctx


def spin_until(executor: Any, predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout_s`` passes; returns the predicate."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """Stop a child started by a test: SIGINT, then SIGKILL after ``timeout_s``; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode
