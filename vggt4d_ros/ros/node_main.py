"""The ``vggt4d_node`` process: start the node, spin it, stop it on SIGINT/SIGTERM.

Signals: rclpy's own signal handlers are not installed. During start-up (parameter declaration, an
``autostart`` configure that loads the checkpoint) SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main
thread, which ends start-up at once. Once the node spins, the executor runs on its own thread and the main thread
only waits: SIGINT/SIGTERM then set an event and the main thread stops the executor, discards the window in
flight and releases the model. A signal therefore never surfaces as an exception inside rclpy, a callback or a
garbage-collector callback (which Python would print as a traceback while the process went on), and further
signals during the clean-up are ignored (``ros2 launch`` forwards its SIGINT to a node that the terminal's
Ctrl-C already reached).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from .node import VGGT4DNode

logger = logging.getLogger(__name__)

#: signals that stop the node
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _RosLogHandler(logging.Handler):
    """Forward Python ``logging`` records of the library to the node's ROS logger."""

    def __init__(self, node: VGGT4DNode) -> None:
        super().__init__(level=logging.INFO)
        self._node = node

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {record.getMessage()}"
            log = self._node.get_logger()
            if record.levelno >= logging.ERROR:
                log.error(text)
            elif record.levelno >= logging.WARNING:
                log.warning(text)
            else:
                log.info(text)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _interrupt_start_up(stop: threading.Event) -> Any:
    """Start-up handler: note the request and interrupt the main thread (``KeyboardInterrupt``). Should the
    interrupt be swallowed (Python ignores exceptions raised in a ``__del__`` or weakref callback), the noted
    request still stops the process before it spins."""
    def handler(signum: int, frame: Any) -> None:
        stop.set()
        raise KeyboardInterrupt(f"signal {signum}")
    return handler


def spin_until_signal(executor: MultiThreadedExecutor, stop: threading.Event | None = None,
                      poll_s: float = 0.5) -> None:
    """Spin ``executor`` on a thread of its own until SIGINT/SIGTERM arrives (or ``stop`` is set) or the spin ends
    by itself (the context was shut down); then shut the executor down. Must be called from the main thread.

    The handlers only set the event, so the signal cannot interrupt anything; the main thread wakes from its
    wait (lock waits are interruptible by signals) and stops the executor. An exception that ends the spin while
    the context is still valid is re-raised here."""
    stop = stop if stop is not None else threading.Event()
    failure: list[BaseException] = []

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)
        finally:
            stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    if stop.is_set():  # a start-up signal whose interrupt was swallowed
        ignore_further_signals()
        return
    spinner = threading.Thread(target=spin, name="vggt4d_executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(poll_s):
            pass
    finally:
        ignore_further_signals()
        executor.shutdown(timeout_sec=1.0)
        spinner.join(timeout=5.0)
    if failure and rclpy.ok():
        raise failure[0]


def ignore_further_signals() -> None:
    """Once the node shuts down, ignore further SIGINTs (and SIGTERMs): Ctrl-C on `ros2 launch` signals the node
    twice (the terminal signals the whole process group, and launch forwards its own SIGINT), and the second one
    must not interrupt the clean-up or end the process with a KeyboardInterrupt (exit status -2 instead of 0)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``vggt4d_node``: create the node, auto-configure/activate it when ``autostart`` is true,
    spin a multi-threaded executor until SIGINT/SIGTERM or shutdown. Returns the process exit code (1 when
    auto-start failed, 0 after a signal at any moment: start-up, idle, while a window is processed or
    published)."""
    node: VGGT4DNode | None = None
    handler: _RosLogHandler | None = None
    lib_logger = logging.getLogger("vggt4d_ros")
    # During start-up SIGTERM ends the program like SIGINT (KeyboardInterrupt, caught below).
    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt_start_up(stop))
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = VGGT4DNode()
        handler = _RosLogHandler(node)
        lib_logger.addHandler(handler)
        lib_logger.setLevel(logging.INFO)
        if node.get_parameter("autostart").value:
            for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
                if stop.is_set():
                    return 0  # a start-up signal whose interrupt was swallowed
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    if not rclpy.ok():
                        return 0
                    node.get_logger().fatal(f"autostart: {name} failed (see the error above), exiting with "
                                            f"status 1")
                    return 1
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        spin_until_signal(executor, stop)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        logger.debug("shutdown raced with rclpy", exc_info=True)  # the context went away: a clean stop
    finally:
        ignore_further_signals()
        if node is not None:
            # Stop the worker (discarding the window in flight) and release the model; no lifecycle
            # transition is announced on the way out.
            try:
                node.release()
                if handler is not None:
                    lib_logger.removeHandler(handler)
                node.destroy_node()
            except (KeyboardInterrupt, ExternalShutdownException):
                pass
            except Exception:
                if rclpy.ok():
                    raise
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
