"""The node's side of a Nav2 lifecycle manager's bond.

``nav2_lifecycle_manager`` brings managed nodes up (configure, activate) and then, with its default
``bond_timeout`` of 4 s, waits for each node to form a *bond* (``bond/msg/Status`` heartbeats on the topic
``bond``, bond id = the node's name); a node that does not answer makes the manager abort the bring-up. Nav2's
own nodes create the bond when they activate and destroy it when they deactivate, with a heartbeat period of
0.1 s and a heartbeat timeout of 4 s. :class:`ManagerBond` does the same for the VGGT4D node, through
``bondpy`` (ros/bond_core), where ``bondpy`` and the ``bond`` messages are importable (an apt ROS 2 install has
them; on PyPI-only set-ups ``tools/setup_env.sh`` installs them from ``../shared/ros-wheels`` when present).
Where they are not, :meth:`ManagerBond.start` does nothing (one info line), so the node runs unchanged.

The bond is a plain publisher/subscriber pair on the node (the lifecycle state does not gate it), so it works in
the ``active`` state only because it is started there.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

logger = logging.getLogger(__name__)

#: Topic of the bond (relative: the manager and its nodes share a namespace, as in Nav2).
BOND_TOPIC = "bond"
#: Nav2's bond settings (nav2_util::LifecycleNode::createBond).
HEARTBEAT_PERIOD_S = 0.1
HEARTBEAT_TIMEOUT_S = 4.0
#: bond's default wait for the other side (bond/msg/Constants DEFAULT_CONNECT_TIMEOUT).
CONNECT_TIMEOUT_S = 10.0


def _bond_class() -> Optional[type]:
    """bondpy's ``Bond`` with a heartbeat-timeout handler that does not declare a parameter on the node, or
    ``None`` when bondpy or the bond messages cannot be imported.

    It also drops a heartbeat that its thread publishes after the context was shut down (SIGINT), which would
    otherwise end that thread with a traceback.

    bondpy's own handler declares ``/bond_disable_heartbeat_timeout`` on the node each time it fires; the second
    declaration raises inside its timer thread and the bond would never break. This one reads the parameter
    only when the node already has it (declared by the user) and otherwise breaks the bond as bondpy intends.
    """
    try:
        from bond.msg import Constants, Status  # noqa: F401
        from bondpy.bondpy import Bond
        from rclpy.duration import Duration
    except ImportError as exc:
        logger.debug("bond not available: %s", exc)
        return None

    class _NodeBond(Bond):
        #: How long :meth:`shutdown` waits for the manager to acknowledge the broken bond.
        ack_timeout_s = 1.0

        def shutdown(self) -> None:
            # Replaces bondpy's, which destroys its subscription and publisher directly (not through the node)
            # while an executor may be waiting on them (InvalidHandle in the executor thread), and destroys the
            # publisher right after the one "dead" message. Here: break the bond, let the heartbeat thread
            # repeat "dead" until the manager acknowledges (or ack_timeout_s), stop that thread and the
            # timers, then remove the subscription and publisher from the node.
            if self.is_shutdown:
                return
            with self.lock:
                alive = self.sm.getState().getName() != "SM.Dead"
            if alive:
                self.break_bond()
                if self.node.context.ok():
                    self.wait_until_broken(Duration(seconds=self.ack_timeout_s))
            with self.lock:
                self.is_shutdown = True
                self.condition.notify_all()
            thread = getattr(self, "thread", None)
            if thread is not None:
                thread.join(2.0)
            for timer in (self.connect_timer, self.heartbeat_timer, self.disconnect_timer, self.deadline):
                if timer is not None:
                    timer.cancel()
            self.node.destroy_subscription(self.sub)
            self.node.destroy_publisher(self.pub)

        def _publish(self, active: bool) -> None:
            # bondpy's heartbeat thread may still publish once after SIGINT shut the context down
            try:
                super()._publish(active)
            except Exception:  # noqa: BLE001
                if self.node.context.ok():
                    raise

        def _on_heartbeat_timeout(self) -> None:
            name = Constants.DISABLE_HEARTBEAT_TIMEOUT_PARAM
            if self.node.has_parameter(name) and self.node.get_parameter(name).value:
                logger.warning("bond heartbeat timeout ignored (%s is true; topic %s, id %s)", name, self.topic,
                               self.id)
                return
            with self.lock:
                self.sm.HeartbeatTimeout()
            self._flush_pending_callbacks()

    return _NodeBond


class ManagerBond:
    """Answers a lifecycle manager's bond between :meth:`start` (on activate) and :meth:`stop` (on deactivate,
    cleanup, shutdown). Both are idempotent and never raise: a bond problem is logged, the node keeps running.

    Args:
        node: the rclpy node (its name is the bond id).
        topic: bond topic (default ``bond``, resolved in the node's namespace).
        heartbeat_period: seconds between heartbeats (Nav2: 0.1).
        heartbeat_timeout: seconds without the manager's heartbeat before the bond breaks (Nav2: 4.0).
        connect_timeout: seconds to wait for a manager after :meth:`start` (bond's default: 10); without one the
            bond gives up (one info line) and the node runs on.
    """

    def __init__(self, node: Any, topic: str = BOND_TOPIC, heartbeat_period: float = HEARTBEAT_PERIOD_S,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self._node = node
        self._topic = topic
        self._period = float(heartbeat_period)
        self._timeout = float(heartbeat_timeout)
        self._bond: Any = None
        self._formed = False
        self._connect_timeout = float(connect_timeout)
        self._cls: Optional[type] = None
        self._looked_up = False

    @property
    def available(self) -> bool:
        """True when bondpy and the bond messages are importable."""
        if not self._looked_up:
            self._cls = _bond_class()
            self._looked_up = True
        return self._cls is not None

    @property
    def active(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._bond is not None

    def start(self) -> bool:
        """Start answering the bond (id = the node's name). Returns True when a bond was started."""
        if self._bond is not None:
            return True
        if not self.available:
            logger.info("bondpy / bond messages not importable: no bond for a lifecycle manager")
            return False
        try:
            bond = self._cls(self._node, self._topic, self._node.get_name(),
                             on_broken=self._on_broken, on_formed=self._on_formed)
            bond.heartbeat_period = self._period
            bond.heartbeat_timeout = self._timeout
            bond.connect_timeout = self._connect_timeout
            self._formed = False
            bond.start()
        except Exception as exc:  # noqa: BLE001 - the node must keep running without a bond
            logger.error("cannot start the lifecycle-manager bond: %s: %s", type(exc).__name__, exc)
            return False
        self._bond = bond
        logger.info("answering a lifecycle manager's bond on %s (id %s)",
                    self._node.resolve_topic_name(self._topic), self._node.get_name())
        return True

    def stop(self) -> None:
        """Break the bond (the manager sees the node go) and release its publisher and subscription."""
        bond, self._bond = self._bond, None
        if bond is None:
            return
        try:
            bond.shutdown()
        except Exception as exc:  # noqa: BLE001
            logger.warning("stopping the lifecycle-manager bond: %s: %s", type(exc).__name__, exc)

    def _on_formed(self) -> None:
        self._formed = True
        logger.info("lifecycle-manager bond formed")

    def _on_broken(self) -> None:
        if self._bond is None:
            return  # stop() broke it
        if self._formed:
            logger.warning("lifecycle-manager bond broken (the manager stopped answering)")
        else:
            logger.info("no lifecycle manager answered the bond within %.0f s; the node runs on without one "
                        "(only Nav2's lifecycle manager needs it)", self._connect_timeout)
