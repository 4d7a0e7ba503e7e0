"""pip install of the ROS-free parts of vggt4d_ros (library + offline ``vggt4d`` CLI).

The ROS 2 package itself (generated ``vggt4d_ros.msg`` and the node executable) is built by ``colcon build``
through CMakeLists.txt; see README.md.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vggt4d_ros"
HERE = Path(__file__).resolve().parent


def _share_files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(HERE)) for p in (HERE / folder).glob("*") if p.is_file())


setup(
    name=PACKAGE,
    version="0.1.0",
    description="VGGT4D dynamic-object masks, camera poses and static maps for ROS 2",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    install_requires=[
        "torch>=2.3",
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "Pillow>=10",
        "tqdm>=4.60",
        "PyYAML>=5.4",
    ],
    extras_require={
        "bags": ["rosbags>=0.10.10"],
        "video": ["av>=12"],
        "eval": ["evo>=1.28"],
        "bench": ["matplotlib>=3.7"],
        "test": ["pytest>=8", "pytest-timeout>=2", "scikit-image>=0.22"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"] if (HERE / "package.xml").exists() else []),
        ("share/" + PACKAGE + "/launch", _share_files("launch")),
        ("share/" + PACKAGE + "/config", _share_files("config")),
    ],
    entry_points={"console_scripts": ["vggt4d = vggt4d_ros.cli:main"]},
    zip_safe=False,
)
