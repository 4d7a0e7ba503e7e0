"""Launch the VGGT4D lifecycle node.

    ros2 launch vggt4d_ros vggt4d.launch.py image_topic:=/camera/color/image_raw device:=cuda

Arguments:
  image_topic        input image topic (remaps the node's relative `image`; `image/compressed` becomes
                     `<image_topic>/compressed`)                                  default: image
  camera_info_topic  camera_info topic (remaps `camera_info`); empty: the image topic's sibling, i.e. its last
                     name token replaced by `camera_info` (image_transport convention:
                     /camera/color/image_raw -> /camera/color/camera_info)          default: (sibling)
  params_file        parameter file                          default: <share>/vggt4d_ros/config/vggt4d.yaml
  weights            checkpoint (hub id or path); empty keeps the params file's value
  model_config       preset name or JSON path; empty keeps the params file's value
  device             auto | cpu | cuda | cuda:N; empty keeps the params file's value
  namespace          namespace of the node                                        default: (none)
  autostart          configure + activate the node on start; false leaves it to a lifecycle manager
                                                                                  default: true
  use_sim_time       take time from /clock (bag replay with --clock)              default: false
  log_level          debug | info | warn | error | fatal                          default: info

The node is a managed (lifecycle) node; with autostart:=true it configures and activates itself, and exits
with status 1 when configuration fails (bad parameter, missing weights), so launch reports the failure.

The module imports `launch`/`launch_ros` only inside generate_launch_description(), so node_arguments()
and ros_arguments() can be used (and tested) where launch is not installed: they give the exact package,
executable, parameters and remappings this file hands to launch_ros.
"""

from __future__ import annotations

import os

PACKAGE = "vggt4d_ros"
EXECUTABLE = "vggt4d_node"
NODE_NAME = "vggt4d"

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")

LAUNCH_ARGUMENTS = {
    "image_topic": ("image", "Input image topic (sensor_msgs/Image); the node subscribes to '<topic>/compressed' "
                             "when its input_transport is 'compressed'."),
    "camera_info_topic": ("", "camera_info topic (sensor_msgs/CameraInfo); empty: the image topic's sibling "
                              "(last name token replaced by 'camera_info')."),
    "params_file": (None, "YAML parameter file of the node."),
    "weights": ("", "VGGT checkpoint (hub id or local path); empty keeps the params file's value."),
    "model_config": ("", "Model preset or JSON config path; empty keeps the params file's value."),
    "device": ("", "auto | cpu | cuda | cuda:N; empty keeps the params file's value."),
    "namespace": ("", "Namespace of the node."),
    "autostart": ("true", "Configure and activate the node on start."),
    "use_sim_time": ("false", "Use /clock as the node's time source."),
    "log_level": ("info", "Logging level of the node: " + " | ".join(LOG_LEVELS) + "."),
}


def _is_true(value: str | bool, name: str = "autostart") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name}:={value!r} is not a boolean (true or false)")


def camera_info_sibling(image_topic: str) -> str:
    """The camera_info topic next to ``image_topic`` (image_transport convention): its last name token replaced
    by ``camera_info``: ``/camera/color/image_raw`` -> ``/camera/color/camera_info``, ``image`` -> ``camera_info``."""
    head, _, _ = image_topic.rstrip("/").rpartition("/")
    if not head and image_topic.startswith("/"):
        return "/camera_info"
    return f"{head}/camera_info" if head else "camera_info"


def _log_level(value: str) -> str:
    level = str(value).strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level:={value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def default_params_file() -> str:
    """``<share of vggt4d_ros>/config/vggt4d.yaml`` from the ament index."""
    from ament_index_python.packages import get_package_share_directory

    return os.path.join(get_package_share_directory(PACKAGE), "config", "vggt4d.yaml")


def node_arguments(image_topic: str = "image", params_file: str | None = None, weights: str = "",
                   model_config: str = "", device: str = "", namespace: str = "",
                   autostart: str | bool = True, camera_info_topic: str = "",
                   use_sim_time: str | bool = False, log_level: str = "info") -> dict:
    """Keyword arguments of the ``launch_ros.actions.LifecycleNode`` this file starts.

    Raises:
        ValueError: ``autostart`` / ``use_sim_time`` not a boolean, ``log_level`` not a known level.
    """
    overrides: dict[str, object] = {"autostart": _is_true(autostart),
                                    "use_sim_time": _is_true(use_sim_time, "use_sim_time")}
    if weights:
        overrides["weights"] = weights
    if model_config:
        overrides["model_config"] = model_config
    if device:
        overrides["device"] = device
    remappings = [("image", image_topic), ("image/compressed", image_topic.rstrip("/") + "/compressed"),
                  ("camera_info", camera_info_topic or camera_info_sibling(image_topic))]
    return {
        "package": PACKAGE,
        "executable": EXECUTABLE,
        "name": NODE_NAME,
        "namespace": namespace,
        "parameters": [params_file or default_params_file(), overrides],
        "remappings": remappings,
        "ros_arguments": ["--log-level", _log_level(log_level)],
        "output": "screen",
    }


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ros_arguments(kwargs: dict) -> list[str]:
    """The command-line arguments launch_ros gives the executable for ``kwargs`` (from :func:`node_arguments`):
    node name, namespace, parameter files, parameter values and remappings after ``--ros-args``."""
    args = ["--ros-args", *kwargs.get("ros_arguments", []), "-r", f"__node:={kwargs['name']}"]
    if kwargs.get("namespace"):
        ns = kwargs["namespace"]
        args += ["-r", f"__ns:={ns if ns.startswith('/') else '/' + ns}"]
    for entry in kwargs["parameters"]:
        if isinstance(entry, dict):
            for name, value in entry.items():
                args += ["-p", f"{name}:={_format_value(value)}"]
        else:
            args += ["--params-file", str(entry)]
    for src, dst in kwargs["remappings"]:
        args += ["-r", f"{src}:={dst}"]
    return args


def _launch_setup(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode

    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    return [LifecycleNode(**node_arguments(**values))]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    declared = []
    for name, (default, description) in LAUNCH_ARGUMENTS.items():
        if name == "params_file":
            default = default_params_file()
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])
