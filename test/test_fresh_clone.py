"""A checkout with nothing beside it (no ../shared) carries what its tests read, and the tests of the real
`ros2 launch` / `ros2` CLI / Nav2 bond skip there with one line saying why.

Cheap by design (CI runs the suite once): the tracked files, as a fresh clone has them, are copied into an empty
temporary folder, and a representative subset runs there with this venv (fixtures, checkpoint loading,
preprocessing golden data); the launch/CLI/bond test files run there with `launch`, `ros2cli`, `bondpy`, ...
made unimportable, as on a machine without ../shared/ros-wheels.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Modules that ../shared/ros-wheels provides (absent from PyPI).
SHARED_MODULES = ("launch", "launch_ros", "launch_xml", "launch_yaml", "ros2launch", "ros2cli", "ros2pkg",
                  "ros2node", "ros2topic", "ros2param", "ros2service", "ros2lifecycle", "rosidl_runtime_py",
                  "bondpy", "smclib", "bond", "composition_interfaces")

#: Test files that must pass in a fresh clone (they read the fixtures that the repository carries).
SUBSET = ("test/test_preprocess.py", "test/test_model_loader.py")


def _tracked_files() -> list[str]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a clone would have")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files (working-tree versions) in ``<empty tmp>/vggt4d_ros``: no ``../shared`` beside it."""
    root = tmp_path_factory.mktemp("fresh_clone") / "vggt4d_ros"
    for rel in _tracked_files():
        src = REPO / rel
        if src.is_file():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    assert not (root.parent / "shared").exists()
    return root


def _env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VGGT4D_FIXTURES", "VGGT4D_ROS_WHEELS", "PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(clone)  # the clone's vggt4d_ros, not this checkout's
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


_BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in BLOCKED else _find_spec(name, package)
importlib.util.find_spec = find_spec
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def _pytest(clone: Path, args: list[str], blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _BLOCKER, ",".join(blocked) or "-", *args, "-q", "-rs", "-p", "no:cacheprovider",
           "--timeout=600"]
    return subprocess.run(cmd, cwd=clone, env=_env(clone), capture_output=True, text=True, timeout=900)


#: How a path into the shared folder is built (mentions in messages and docs are fine).
_SHARED_PATH = re.compile(r"""['"/]\.\./shared|/work/shared|shared/fixtures|parents\[\d+\]\s*/\s*['"]shared""")


def test_tracked_files_do_not_read_the_shared_folder_at_run_time():
    """Only the set-up script (which installs the optional wheels when the folder exists) builds a path into it."""
    allowed = {"tools/setup_env.sh", "test/test_fresh_clone.py"}
    offenders = []
    for rel in _tracked_files():
        path = REPO / rel
        if rel in allowed or rel.endswith(".md") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if _SHARED_PATH.search(text):
            offenders.append(rel)
    assert not offenders, f"tracked files that build a path into the shared folder: {offenders}"
    assert _SHARED_PATH.search((REPO / "tools" / "setup_env.sh").read_text()), "the pattern no longer matches"


def test_fixtures_are_in_the_repository_and_a_subset_passes_in_a_fresh_clone(clone: Path):
    assert (clone / "test" / "fixtures" / "tiny_dino_weights.safetensors").is_file()
    assert (clone / "test" / "fixtures" / "README.md").is_file()
    result = _pytest(clone, list(SUBSET))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


def test_launch_cli_and_bond_tests_skip_with_their_reason_without_the_shared_wheels(clone: Path):
    result = _pytest(clone, ["test/test_ros2_launch.py", "test/test_node_bond.py"], SHARED_MODULES)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert any("ros2 launch / ros2 CLI not importable" in line and "../shared/ros-wheels" in line
               for line in skipped), out[-3000:]
    assert any("bondpy is not importable" in line and "../shared/ros-wheels" in line for line in skipped), \
        out[-3000:]
    assert " passed" not in out and " failed" not in out, out[-3000:]
