"""What the installed code imports versus what package.xml and setup.py declare, and declared minimum versions
versus the library APIs the code calls (a table of API -> first version that has it).

No ROS needed: the sources are parsed with `ast` and searched as text.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vggt4d_ros"

#: Imported modules that are ROS packages: module -> package.xml dependency name.
ROS_PACKAGES = {m: m for m in (
    "rclpy", "rcl_interfaces", "std_srvs", "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "diagnostic_msgs",
    "tf2_msgs", "lifecycle_msgs", "builtin_interfaces", "rosgraph_msgs", "launch", "launch_ros",
    "ament_index_python", "bond", "bondpy")}
#: Python libraries with a rosdep key: module -> (rosdep key, PyPI distribution in setup.py install_requires).
ROSDEP_KEYS = {"numpy": ("python3-numpy", "numpy"), "scipy": ("python3-scipy", "scipy"),
               "PIL": ("python3-pil", "Pillow"), "tqdm": ("python3-tqdm", "tqdm"), "yaml": ("python3-yaml", "PyYAML")}
#: Required Python libraries without a usable rosdep key (pip, see package.xml's comment and the README).
PIP_ONLY = {"torch": "torch", "safetensors": "safetensors", "huggingface_hub": "huggingface_hub"}
#: Optional libraries (setup.py extras), imported only by the tools that need them.
OPTIONAL = {"rosbags": "rosbags", "av": "av", "evo": "evo", "matplotlib": "matplotlib"}

#: (distribution, regex over the source text, first version with that API, what it is).
API_MINIMUMS = [
    ("scipy", r"\.as_quat\([^)]*canonical\s*=", "1.12", "Rotation.as_quat(canonical=...)"),
    ("scipy", r"scalar_first\s*=", "1.14", "Rotation quaternions with scalar_first=..."),
    ("scipy", r"Rotation\.from_matrix|\.as_matrix\(", "1.4", "Rotation.from_matrix / as_matrix"),
    ("scipy", r"cKDTree\([^)]*\)\.query\([^)]*workers\s*=", "1.6", "cKDTree.query(workers=...)"),
    ("numpy", r"np\.random\.default_rng", "1.17", "numpy.random.default_rng"),
    ("numpy", r"np\.(vecdot|matvec|vecmat|unstack|trapezoid|cumulative_sum)\(", "2.0", "numpy 2 array API functions"),
    ("torch", r"scaled_dot_product_attention", "2.0", "torch.nn.functional.scaled_dot_product_attention"),
    ("torch", r"torch\.load\([^)]*weights_only\s*=", "1.13", "torch.load(weights_only=...)"),
    ("torch", r"torch\.nn\.functional\.rms_norm|F\.rms_norm|nn\.RMSNorm", "2.4", "RMSNorm"),
    ("torch", r"torch\.compiler\.", "2.1", "torch.compiler"),
    ("Pillow", r"Image\.Resampling", "9.1", "PIL.Image.Resampling"),
    ("huggingface_hub", r"from huggingface_hub\.errors import", "0.23", "huggingface_hub.errors"),
    ("rosbags", r"Stores\.ROS2_KILTED", "0.10.10", "rosbags' ROS 2 Kilted type store"),
    ("rosbags", r"Stores\.ROS2_JAZZY", "0.9.20", "rosbags' ROS 2 Jazzy type store"),
]


def _sources() -> list[Path]:
    return sorted(REPO.joinpath(PACKAGE).rglob("*.py")) + sorted(REPO.joinpath("launch").glob("*.py"))


def _imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere (module level or inside functions) -> files."""
    found: dict[str, set[str]] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in (PACKAGE, "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _depends(root: ET.Element, kinds=("depend", "exec_depend")) -> dict[str, ET.Element]:
    return {e.text.strip(): e for kind in kinds for e in root.findall(kind)}


def _setup_requirements() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    """setup.py's install_requires and extras (all extras together), by lower-cased distribution name."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    required = {Requirement(s).name.lower(): Requirement(s) for s in ast.literal_eval(kw["install_requires"])}
    extras = {Requirement(s).name.lower(): Requirement(s)
              for group in ast.literal_eval(kw["extras_require"]).values() for s in group}
    return required, extras


def _minimum(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def test_every_import_is_classified():
    known = set(ROS_PACKAGES) | set(ROSDEP_KEYS) | set(PIP_ONLY) | set(OPTIONAL)
    unknown = {m: sorted(files) for m, files in _imports().items() if m not in known}
    assert not unknown, (f"imports not classified in this test (a ROS package for package.xml, a rosdep key, "
                         f"pip-only or optional): {unknown}")


def test_package_xml_declares_every_ros_package_and_rosdep_key_the_code_imports():
    declared = _depends(_package_xml())
    imports = _imports()
    missing = sorted(ROS_PACKAGES[m] for m in imports if m in ROS_PACKAGES and ROS_PACKAGES[m] not in declared)
    missing += sorted(ROSDEP_KEYS[m][0] for m in imports if m in ROSDEP_KEYS and ROSDEP_KEYS[m][0] not in declared)
    assert not missing, f"package.xml lacks <exec_depend> for {missing}"
    # and nothing the code no longer imports (msg/Window.msg's interfaces; lifecycle_msgs: the lifecycle
    # services and transition events of rclpy.lifecycle.LifecycleNode, which the node is)
    window_deps = {"builtin_interfaces", "std_msgs", "geometry_msgs", "rosidl_default_runtime", "lifecycle_msgs"}
    used = {ROS_PACKAGES[m] for m in imports if m in ROS_PACKAGES} | \
        {ROSDEP_KEYS[m][0] for m in imports if m in ROSDEP_KEYS} | window_deps
    stale = sorted(set(_depends(_package_xml(), ("exec_depend",))) - used)
    assert not stale, f"package.xml declares run-time dependencies nothing imports: {stale}"


def test_pip_only_dependencies_are_in_setup_py_and_explained_in_package_xml():
    required, extras = _setup_requirements()
    text = (REPO / "package.xml").read_text()
    for module, dist in PIP_ONLY.items():
        assert dist.lower() in required, f"{dist} missing from setup.py install_requires"
        assert dist in text, f"package.xml does not say how {dist} is installed"
    for module, dist in OPTIONAL.items():
        assert dist.lower() in extras, f"optional {dist} missing from setup.py extras_require"
    for module, (key, dist) in ROSDEP_KEYS.items():
        assert dist.lower() in required, f"{dist} missing from setup.py install_requires"
    assert "no rosdep keys exist" not in text.lower()
    assert "no rosdep keys exist" not in (REPO / "README.md").read_text().lower()


def test_package_xml_minimum_versions_equal_setup_py():
    required, _ = _setup_requirements()
    for module, (key, dist) in ROSDEP_KEYS.items():
        element = _depends(_package_xml())[key]
        low = _minimum(required[dist.lower()])
        if low is None:
            assert "version_gte" not in element.attrib, key
        else:
            assert Version(element.attrib.get("version_gte", "0")) == low, (key, element.attrib, str(low))


@pytest.mark.parametrize("dist,pattern,first,what", API_MINIMUMS, ids=[row[3] for row in API_MINIMUMS])
def test_declared_minimum_covers_the_apis_used(dist: str, pattern: str, first: str, what: str):
    users = [str(p.relative_to(REPO)) for p in _sources() if re.search(pattern, p.read_text())]
    if not users:
        return  # the code does not use this API: nothing to require
    required, extras = _setup_requirements()
    req = required.get(dist.lower()) or extras.get(dist.lower())
    assert req is not None, f"{dist} is used ({what} in {users}) but not declared in setup.py"
    low = _minimum(req)
    assert low is not None and low >= Version(first), (
        f"{what} (used in {users}) needs {dist} >= {first}, but setup.py allows {req}")


def test_api_table_detects_what_it_should():
    """The table's patterns match the calls they describe (guards against a pattern that can never match)."""
    samples = {"Rotation.as_quat(canonical=...)": "Rotation.from_matrix(R).as_quat(canonical=True)",
               "rosbags' ROS 2 Kilted type store": "get_typestore(Stores.ROS2_KILTED)",
               "torch.load(weights_only=...)": 'torch.load(path, map_location="cpu", weights_only=True)',
               "cKDTree.query(workers=...)": "cKDTree(ref).query(points, k=3, workers=-1)"}
    rows = {row[3]: row for row in API_MINIMUMS}
    for what, sample in samples.items():
        assert re.search(rows[what][1], sample), what
