"""Apache Kafka in KRaft combined mode (one broker+controller) assembled from Maven Central.

Kafka ships no pip-installable broker, and Docker is not assumed; the broker jars are just Maven
artifacts, so Maven resolves them once into the cache and we run ``kafka.Kafka`` on a JVM.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from streamflow.connectors import KafkaSecurity, kafka_client_options
from streamflow.errors import ServiceError

from ._base import (
    ServiceStatus,
    await_ready,
    check_port_free,
    locked,
    our_pid,
    progress,
    run,
    spawn_detached,
    stop_pid_service,
    tcp_connectable,
    terminate,
    write_private,
)
from ._config import (
    HOST,
    KAFKA_BOOTSTRAP,
    KAFKA_CONTROLLER_PORT,
    KAFKA_MTLS_BOOTSTRAP,
    KAFKA_OAUTH_BOOTSTRAP,
    KAFKA_PORT,
    KAFKA_SCALA_VERSION,
    KAFKA_SCRAM_BOOTSTRAP,
    KAFKA_VERSION,
    LOG4J_SLF4J_VERSION,
    cache_dir,
    run_dir,
)
from ._kafka_secure import SECURE_PORTS, ensure_scram_users, listeners, properties, protocol_map
from ._pki import DevPki, dev_pki

NAME = "kafka"
PORTS = (KAFKA_PORT, KAFKA_CONTROLLER_PORT, *SECURE_PORTS)
START_TIMEOUT = 60.0

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamflow</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{KAFKA_SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache
logger.apache.level = WARN
logger.kafkaserver.name = kafka.server.KafkaRaftServer
logger.kafkaserver.level = INFO
"""


def _home() -> Path:
    return cache_dir() / "kafka" / KAFKA_VERSION


def _libs() -> Path:
    return _home() / "libs"


def _server_properties(data_dir: Path, pki: DevPki) -> str:
    """One node, loopback only, PLAINTEXT plus the secured listeners (``_kafka_secure``).
    Retention is checked every 10 s, not 5 minutes, so a short ``ledger_retention_s``
    (tests, ``bench soak``) takes effect within a run."""
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},CONTROLLER://{HOST}:{KAFKA_CONTROLLER_PORT},{listeners()}
advertised.listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},{listeners()}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,{protocol_map()}
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
num.partitions=4
auto.create.topics.enable=true
log.segment.delete.delay.ms=1000
log.retention.check.interval.ms=10000
{properties(pki)}"""


def _config_path() -> Path:
    return run_dir(NAME) / "server.properties"


def _pid_file() -> Path:
    return run_dir(NAME) / "kafka.pid"


def _log() -> Path:
    return run_dir(NAME) / "kafka.log"


def _ensure_jars() -> None:
    """Resolve the broker jars once; a ``.complete`` marker makes later runs download nothing."""
    marker = _libs() / ".complete"
    if marker.exists():
        return
    if shutil.which("java") is None:
        raise ServiceError(
            "kafka: no `java` on PATH. Install a JRE 17+, e.g. "
            "`apt-get install -y openjdk-17-jre-headless`."
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "kafka: no `mvn` on PATH (needed once to fetch the broker jars). "
            "Install it, e.g. `apt-get install -y maven`."
        )
    home = _home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM)
    shutil.rmtree(_libs(), ignore_errors=True)
    progress(f"kafka: downloading Kafka {KAFKA_VERSION} jars from Maven Central (first time only)…")
    run(
        [
            mvn,
            "-q",
            "-B",
            f"-Dmaven.repo.local={cache_dir() / 'm2'}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={_libs()}",
        ],
        "kafka: maven dependency download",
        cwd=home,
    )
    marker.write_text(KAFKA_VERSION + "\n")


def _java_cmd(*args: str, heap: tuple[str, ...] = ()) -> list[str]:
    log4j = _home() / "log4j2.properties"
    log4j.write_text(_LOG4J)
    return ["java", *heap, "-cp", f"{_libs()}/*", f"-Dlog4j2.configurationFile={log4j}", *args]


def _pid() -> int | None:
    return our_pid(_pid_file(), str(_config_path()))


def status() -> ServiceStatus:
    pid = _pid()
    running = pid is not None and tcp_connectable(KAFKA_PORT)
    return ServiceStatus(
        name=NAME,
        running=running,
        pid=pid,
        ports=PORTS,
        version=KAFKA_VERSION,
        log=str(_log()),
        endpoints={"bootstrap": KAFKA_BOOTSTRAP, "scram_bootstrap": KAFKA_SCRAM_BOOTSTRAP,
                   "mtls_bootstrap": KAFKA_MTLS_BOOTSTRAP,
                   "oauth_bootstrap": KAFKA_OAUTH_BOOTSTRAP},
    )


def up() -> ServiceStatus:
    """Start the broker, or reuse it; one started with other settings (say, before the
    secured listeners existed) is restarted with these, keeping its data."""
    with locked(run_dir(NAME) / ".lock"):
        current = status()
        wanted = _server_properties(run_dir(NAME) / "data", dev_pki())
        if current.running and _written() == wanted:
            ensure_scram_users(_java_cmd(), run_dir(NAME), _meta())
            return current
        if current.pid is not None:
            why = "its configuration changed" if current.running else "not accepting connections"
            progress(f"kafka: pid {current.pid} is ours but {why}; restarting it")
            terminate(current.pid, NAME)
        for port in PORTS:
            check_port_free(port, NAME)
        _ensure_jars()
        started = _start(wanted)
        ensure_scram_users(_java_cmd(), run_dir(NAME), _meta())
        return started


def _written() -> str | None:
    try:
        return _config_path().read_text()
    except OSError:
        return None


def _meta() -> Path:
    return run_dir(NAME) / "data" / "meta.properties"


def _start(properties_text: str) -> ServiceStatus:
    rdir = run_dir(NAME)
    data = rdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = _config_path()
    write_private(config, properties_text)  # it holds the keystore password
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        progress(f"kafka: formatting storage in {data}")
        run(
            _java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
            "kafka: storage format",
            cwd=rdir,
        )
    progress(f"kafka: starting broker on {KAFKA_BOOTSTRAP}")
    log = _log()
    pid = spawn_detached(
        _java_cmd("kafka.Kafka", str(config), heap=("-Xms256m", "-Xmx1g")),
        log=log,
        cwd=rdir,
    )
    _pid_file().write_text(f"{pid}\n")

    def ready() -> bool:
        if not tcp_connectable(KAFKA_PORT):
            return False
        try:
            return "Kafka Server started" in log.read_text(errors="replace")
        except OSError:
            return False

    await_ready(NAME, pid, ready, log, START_TIMEOUT)
    return status()


def down() -> None:
    with locked(run_dir(NAME) / ".lock"):
        stop_pid_service(NAME, _pid(), _pid_file())


async def delete_topics(bootstrap: str, match: Callable[[str], object],
                        security: KafkaSecurity | None = None) -> int:
    """Delete every topic ``match`` accepts; return how many. Tests and benchmarks drop what
    they created, because a broker starts (and runs) slower as partitions pile up."""
    # Deferred: `streamflow services` starts and stops services without loading the client.
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client_options(bootstrap, security))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if match(t)]
        for i in range(0, len(doomed), 200):
            await admin.delete_topics(doomed[i:i + 200], timeout_ms=60_000)
        return len(doomed)
    finally:
        await admin.close()


def reset() -> None:
    """Stop the broker and delete every topic with its storage; the next ``up`` formats anew."""
    with locked(run_dir(NAME) / ".lock"):
        stop_pid_service(NAME, _pid(), _pid_file())
        data = run_dir(NAME) / "data"
        if data.exists():
            progress(f"kafka: deleting all topics (removing {data})")
            shutil.rmtree(data)
