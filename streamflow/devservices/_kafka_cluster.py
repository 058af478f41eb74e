"""A local three-node KRaft cluster (each node broker and controller, three voters) for what a
single broker cannot show: replication, and a pipeline that outlives the loss of the broker
that coordinates its group or its transactions.

It shares the single broker's jars and JVM command (``_kafka``) but has its own ports and data
directories, so both can run at once. ``up`` starts whichever nodes are down, so a test that
SIGKILLs one node brings it back with ``up`` again.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import uuid
from functools import partial
from pathlib import Path

from ._base import (
    ServiceStatus,
    alive,
    await_ready,
    check_port_free,
    locked,
    our_pid,
    port_in_use,
    progress,
    run,
    spawn_detached,
    stop_pid_service,
    tcp_connectable,
    wait_until,
)
from ._config import (
    HOST,
    KAFKA_CLUSTER,
    KAFKA_CLUSTER_BOOTSTRAP,
    KAFKA_CLUSTER_CONTROLLER_PORTS,
    KAFKA_CLUSTER_PORTS,
    KAFKA_VERSION,
    run_dir,
)
from ._kafka import START_TIMEOUT, _ensure_jars, _java_cmd

NAME = KAFKA_CLUSTER
NODES = (1, 2, 3)
PORTS = (*KAFKA_CLUSTER_PORTS, *KAFKA_CLUSTER_CONTROLLER_PORTS)
HEAP = ("-Xms128m", "-Xmx512m")


def _port(node: int) -> int:
    return KAFKA_CLUSTER_PORTS[node - 1]


def _ports_of(node: int) -> tuple[int, int]:
    return _port(node), KAFKA_CLUSTER_CONTROLLER_PORTS[node - 1]


def _ports_free(node: int) -> bool:
    return not any(port_in_use(port) for port in _ports_of(node))


def _node_dir(node: int) -> Path:
    path = run_dir(NAME) / f"node-{node}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _config_path(node: int) -> Path:
    return _node_dir(node) / "server.properties"


def _log(node: int) -> Path:
    return _node_dir(node) / "kafka.log"


def _pid_file(node: int) -> Path:
    return _node_dir(node) / "kafka.pid"


def _server_properties(node: int) -> str:
    """Loopback only. Offsets and transaction state on all three nodes, a write acknowledged
    by two, and no out-of-sync replica ever elected: a node's loss loses nothing acknowledged.
    Fast heartbeats fence a killed node, and move what it led, in about 3 s rather than 9."""
    voters = ",".join(f"{n}@{HOST}:{KAFKA_CLUSTER_CONTROLLER_PORTS[n - 1]}" for n in NODES)
    port, controller = _port(node), KAFKA_CLUSTER_CONTROLLER_PORTS[node - 1]
    return f"""process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}
advertised.listeners=PLAINTEXT://{HOST}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={_node_dir(node) / "data"}
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=8
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
group.initial.rebalance.delay.ms=0
num.partitions=4
auto.create.topics.enable=true
log.segment.delete.delay.ms=1000
log.retention.check.interval.ms=10000
"""


def node_pid(node: int) -> int | None:
    """The JVM of ``node`` (1-3), if it runs."""
    return our_pid(_pid_file(node), str(_config_path(node)))


def _node_up(node: int) -> bool:
    return node_pid(node) is not None and tcp_connectable(_port(node))


def status() -> ServiceStatus:
    pids = [node_pid(n) for n in NODES]
    return ServiceStatus(
        name=NAME,
        running=all(_node_up(n) for n in NODES),
        pid=next((p for p in pids if p is not None), None),
        ports=PORTS,
        version=KAFKA_VERSION,
        log=str(run_dir(NAME) / "node-*" / "kafka.log"),
        endpoints={"bootstrap": KAFKA_CLUSTER_BOOTSTRAP,
                   "pids": ",".join(str(p or "-") for p in pids)},
    )


def up() -> ServiceStatus:
    """Start every node that is down (all three the first time, formatted with one id)."""
    with locked(run_dir(NAME) / ".lock"):
        down_nodes = [n for n in NODES if not _node_up(n)]
        if not down_nodes:
            return status()
        _ensure_jars()
        for node in down_nodes:
            pid = node_pid(node)
            if pid is not None:  # ours but not serving: start it afresh
                stop_pid_service(f"{NAME} node {node}", pid, _pid_file(node))
            # A JVM killed a moment ago may still hold its sockets while its threads end.
            wait_until(partial(_ports_free, node), timeout=10)
            for port in _ports_of(node):
                check_port_free(port, f"{NAME} node {node}")
        started = {node: _spawn(node) for node in down_nodes}
        for node, pid in started.items():  # the quorum needs them all at once: wait after
            log = _log(node)

            def ready(node: int = node, log: Path = log) -> bool:
                if not tcp_connectable(_port(node)):
                    return False
                try:
                    return "Kafka Server started" in log.read_text(errors="replace")
                except OSError:
                    return False

            await_ready(f"{NAME} node {node}", pid, ready, log, START_TIMEOUT)
        return status()


def _cluster_id() -> str:
    """One id for the three nodes' storage, kept beside them."""
    path = run_dir(NAME) / "cluster.id"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())
    return path.read_text().strip()


def _spawn(node: int) -> int:
    ndir = _node_dir(node)
    config = _config_path(node)
    config.write_text(_server_properties(node))
    if not (ndir / "data" / "meta.properties").exists():
        progress(f"{NAME}: formatting node {node}'s storage in {ndir / 'data'}")
        run(_java_cmd("kafka.tools.StorageTool", "format", "-t", _cluster_id(),
                      "-c", str(config)),
            f"{NAME}: storage format of node {node}", cwd=ndir)
    progress(f"{NAME}: starting node {node} on {HOST}:{_port(node)}")
    if _log(node).exists():  # a restart after a kill: the crash's log stays readable
        _log(node).replace(_log(node).with_suffix(".log.1"))
    pid = spawn_detached(_java_cmd("kafka.Kafka", str(config), heap=HEAP), log=_log(node),
                         cwd=ndir)
    _pid_file(node).write_text(f"{pid}\n")
    return pid


def kill_node(node: int) -> int:
    """SIGKILL one node (a crash, not a shutdown); returns its pid once it is gone and its
    ports are free. ``up`` restarts it."""
    pid = node_pid(node)
    if pid is None:
        raise RuntimeError(f"{NAME} node {node} is not running")
    os.kill(pid, signal.SIGKILL)
    gone = wait_until(lambda: not alive(pid), timeout=10, interval=0.02) and wait_until(
        lambda: _ports_free(node), timeout=10, interval=0.05)
    if not gone:
        raise RuntimeError(f"{NAME} node {node} (pid {pid}) outlived SIGKILL for 10 s")
    return pid


def down() -> None:
    """SIGTERM all three at once: stopped one by one, the last waits for a quorum that is gone."""
    with locked(run_dir(NAME) / ".lock"):
        pids = {node: node_pid(node) for node in NODES}
        for pid in pids.values():
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for node, pid in pids.items():
            stop_pid_service(f"{NAME} node {node}", pid, _pid_file(node))


def reset() -> None:
    """Stop the nodes and delete their storage and the cluster id; ``up`` formats anew."""
    down()
    with locked(run_dir(NAME) / ".lock"):
        progress(f"{NAME}: deleting all topics (removing the nodes' data)")
        for node in NODES:
            shutil.rmtree(_node_dir(node) / "data", ignore_errors=True)
        (run_dir(NAME) / "cluster.id").unlink(missing_ok=True)
