"""Where the built ``vggt4d_ros`` lives and how a process uses it without sourcing ``setup.bash``.

Used by ``vggt4d replay`` (which starts the node from the install space), the benchmark and the tests
(``test/ros_helpers.py``): finding the install prefix, the environment and command line of the node, the
``Window.msg`` definition, and importing the generated messages into a process that runs from the source tree.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

logger = logging.getLogger(__name__)

__all__ = [
    "PACKAGE",
    "NODE_NAME",
    "NODE_EXECUTABLE",
    "install_site_packages",
    "find_install_prefix",
    "node_environment",
    "node_command",
    "window_msg_definition",
    "import_package_messages",
    "message_class",
]

PACKAGE = "vggt4d_ros"
NODE_NAME = "vggt4d"
NODE_EXECUTABLE = "vggt4d_node"


def install_site_packages(prefix: Path) -> Path:
    """``<prefix>/lib/pythonX.Y/site-packages`` for the running Python."""
    return Path(prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _is_install_prefix(prefix: Path) -> bool:
    return (prefix / "share" / PACKAGE / "package.xml").is_file() and \
        (prefix / "lib" / PACKAGE / NODE_EXECUTABLE).is_file()


def _install_prefix_candidates(env: Mapping[str, str]) -> list[Path]:
    candidates: list[Path] = []
    explicit = env.get("VGGT4D_ROS_INSTALL")
    if explicit:
        candidates.append(Path(explicit))
    for entry in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if entry:
            candidates.append(Path(entry))
    here = Path(__file__).resolve()
    # <prefix>/lib/pythonX.Y/site-packages/vggt4d_ros/ros/replay.py: this module inside an install space
    if len(here.parents) > 5 and here.parents[3].name == "site-packages":
        candidates.append(here.parents[5])
    # <repo>/vggt4d_ros/ros/replay.py: the source tree, built into <repo>/install/vggt4d_ros by tools/setup_env.sh
    repo = here.parents[2]
    if (repo / "package.xml").is_file():
        candidates.append(repo / "install" / PACKAGE)
    return candidates


def find_install_prefix(env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The install prefix holding ``lib/vggt4d_ros/vggt4d_node`` and ``share/vggt4d_ros/package.xml``.

    Searched in order: ``$VGGT4D_ROS_INSTALL``, each entry of ``$AMENT_PREFIX_PATH``, the install space this
    module was loaded from, the repository's ``install/vggt4d_ros``. ``None`` when there is none.
    """
    env = os.environ if env is None else env
    for prefix in _install_prefix_candidates(env):
        if _is_install_prefix(prefix):
            return prefix.resolve()
    return None


def _prepend_path(value: Optional[str], *entries: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p]
    return os.pathsep.join([e for e in entries if e not in parts] + parts)


def node_environment(prefix: Optional[Path], base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Environment for a process that runs the node (or imports the generated messages) from ``prefix``
    without sourcing ``setup.bash``.

    * ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` when unset (a value that is set is never changed);
      ``ROS_DOMAIN_ID`` and everything else are inherited from ``base`` (default ``os.environ``).
    * With an install prefix: its ``site-packages`` first on ``PYTHONPATH`` (ahead of a source tree or an
      editable install, which lack the generated ``vggt4d_ros.msg``), ``<prefix>/lib`` first on
      ``LD_LIBRARY_PATH`` (the typesupport libraries are loaded by name), the prefix first on
      ``AMENT_PREFIX_PATH`` and the running venv after it when it holds an ament index (the PyPI ROS wheels),
      and ``PYTHONSAFEPATH=1`` so that a working directory at the repository root cannot shadow the installed
      package.
    """
    env = dict(os.environ if base is None else base)
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    if prefix is None:
        return env
    prefix = Path(prefix)
    env["PYTHONPATH"] = _prepend_path(env.get("PYTHONPATH"), str(install_site_packages(prefix)))
    env["LD_LIBRARY_PATH"] = _prepend_path(env.get("LD_LIBRARY_PATH"), str(prefix / "lib"))
    ament = [str(prefix)]
    if (Path(sys.prefix) / "share" / "ament_index").is_dir():
        ament.append(sys.prefix)
    rest = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p and p not in ament]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(ament + rest)
    env["PYTHONSAFEPATH"] = "1"
    return env


def node_command(prefix: Optional[Path]) -> list[str]:
    """The node's command line without ROS arguments: the installed executable, else ``python -m``."""
    if prefix is not None:
        exe = Path(prefix) / "lib" / PACKAGE / NODE_EXECUTABLE
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [sys.executable, "-m", "vggt4d_ros.ros.node_main"]


def window_msg_definition(prefix: Optional[Path]) -> Optional[str]:
    """Text of ``msg/Window.msg``: from the install space (``share/vggt4d_ros/msg``), else the source tree."""
    candidates = []
    if prefix is not None:
        candidates.append(Path(prefix) / "share" / PACKAGE / "msg" / "Window.msg")
    candidates.append(Path(__file__).resolve().parents[2] / "msg" / "Window.msg")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    return None


def import_package_messages(prefix: Optional[Path]) -> bool:
    """Make the generated ``vggt4d_ros.msg`` importable in this process; returns whether it is.

    When the running ``vggt4d_ros`` is the source tree (an editable install, which has no ``msg``), the
    install space's package directory is added to ``vggt4d_ros.__path__`` and its generated libraries are
    loaded by absolute path (global symbols), so that the typesupport's load by library name finds them
    without ``LD_LIBRARY_PATH``.
    """
    try:
        importlib.import_module(f"{PACKAGE}.msg")
        return True
    except ImportError:
        pass
    if prefix is None:
        return False
    import vggt4d_ros

    pkg_dir = install_site_packages(Path(prefix)) / PACKAGE
    if not (pkg_dir / "msg").is_dir():
        return False
    if str(pkg_dir) not in vggt4d_ros.__path__:
        vggt4d_ros.__path__.append(str(pkg_dir))
    for lib in sorted(glob.glob(str(Path(prefix) / "lib" / f"lib{PACKAGE}__rosidl_*.so"))):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    os.environ["AMENT_PREFIX_PATH"] = _prepend_path(os.environ.get("AMENT_PREFIX_PATH"), str(prefix))
    sys.modules.pop(f"{PACKAGE}.msg", None)
    try:
        importlib.import_module(f"{PACKAGE}.msg")
        return True
    except ImportError as exc:
        logger.warning("cannot import %s.msg from %s: %s", PACKAGE, prefix, exc)
        return False


def message_class(type_name: str) -> type:
    """``pkg/msg/Name`` -> the rclpy message class (without rosidl_runtime_py)."""
    parts = type_name.split("/")
    if len(parts) != 3:
        raise ValueError(f"message type must look like 'pkg/msg/Name', got {type_name!r}")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    return getattr(module, parts[2])
