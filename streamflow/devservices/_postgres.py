"""PostgreSQL via Debian's postgresql-common: our own ``streamflow`` cluster on 127.0.0.1:5432.

A dedicated cluster (not Debian's ``main``) means ``down`` never stops someone else's database,
and postgresql-common already knows how to create, start and stop clusters correctly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streamflow.errors import ServiceError

from ._base import (
    ServiceStatus,
    check_port_free,
    locked,
    log_tail,
    progress,
    read_pid,
    run,
    wait_until,
)
from ._config import (
    HOST,
    POSTGRES_CLUSTER,
    POSTGRES_DB,
    POSTGRES_DSN,
    POSTGRES_PASSWORD,
    POSTGRES_PORT,
    POSTGRES_TLS_PASSWORD,
    POSTGRES_TLS_USER,
    POSTGRES_USER,
    run_dir,
)
from ._pki import dev_pki
from ._postgres_tls import ensure_tls, role_sql

NAME = "postgres"
PORTS = (POSTGRES_PORT,)
START_TIMEOUT = 30.0
PG_LIB = Path("/usr/lib/postgresql")
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")


@dataclass(frozen=True)
class Cluster:
    """One row of ``pg_lsclusters``."""

    version: str
    name: str
    port: int
    online: bool
    datadir: Path
    log: str


def _version() -> str | None:
    """Newest installed server major version (``/usr/lib/postgresql/<ver>/bin/postgres``)."""
    if not PG_LIB.is_dir():
        return None
    versions = [p.name for p in PG_LIB.iterdir() if (p / "bin" / "postgres").exists()]
    return max(versions, key=lambda v: float(v), default=None)


def _full_version(ver: str) -> str:
    try:
        out = subprocess.run(
            [str(PG_LIB / ver / "bin" / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return ver
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
    return match.group(1) if match else ver


def _clusters() -> list[Cluster]:
    if shutil.which("pg_lsclusters") is None:
        return []
    out = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout
    clusters = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        clusters.append(
            Cluster(
                version=parts[0],
                name=parts[1],
                port=int(parts[2]),
                online=parts[3].startswith("online"),
                datadir=Path(parts[5]),
                log=parts[6] if len(parts) > 6 else "",
            )
        )
    return clusters


def _ours() -> Cluster | None:
    ver = _version()
    for c in _clusters():
        if c.name == POSTGRES_CLUSTER and (ver is None or c.version == ver):
            return c
    return None


def _ready() -> bool:
    if shutil.which("pg_isready") is None:
        return False
    return (
        subprocess.run(
            ["pg_isready", "-q", "-h", HOST, "-p", str(POSTGRES_PORT)], check=False
        ).returncode
        == 0
    )


def status() -> ServiceStatus:
    ver = _version()
    cluster = _ours()
    pid = read_pid(cluster.datadir / "postmaster.pid") if cluster and cluster.online else None
    running = bool(cluster and cluster.online and cluster.port == POSTGRES_PORT and _ready())
    return ServiceStatus(
        name=NAME,
        running=running,
        pid=pid,
        ports=PORTS,
        version=_full_version(ver) if ver else None,
        log=cluster.log if cluster else None,
        endpoints={"url": POSTGRES_DSN},
    )


def _install() -> str:
    """Install Debian's server package without letting it create/start a ``main`` cluster."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            "postgres: PostgreSQL is not installed. As root on Debian/Ubuntu run: "
            f"mkdir -p {CREATECLUSTER_CONF.parent} && echo 'create_main_cluster = false' "
            f">> {CREATECLUSTER_CONF} && apt-get install -y postgresql"
        )
    progress("postgres: installing PostgreSQL with apt-get (first time only)…")
    CREATECLUSTER_CONF.parent.mkdir(parents=True, exist_ok=True)
    text = CREATECLUSTER_CONF.read_text() if CREATECLUSTER_CONF.exists() else ""
    if "create_main_cluster = false" not in text:
        CREATECLUSTER_CONF.write_text(text + "create_main_cluster = false\n")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], "postgres: apt-get update", env=env)
    run(
        ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", "postgresql"],
        "postgres: apt-get install postgresql",
        env=env,
    )
    ver = _version()
    if ver is None:
        raise ServiceError(f"postgres: installed `postgresql` but found no server under {PG_LIB}")
    return ver


def _write_listen_conf(ver: str) -> None:
    """Loopback only. Via conf.d because ``pg_createcluster -o`` leaves 127.0.0.1 unquoted."""
    conf_d = Path("/etc/postgresql") / ver / POSTGRES_CLUSTER / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "streamflow.conf").write_text(f"listen_addresses = '{HOST}'\n")


def _check_port(ver: str) -> None:
    """Name another cluster on 5432 (typically Debian's ``main``) with the command to drop it."""
    hint = ""
    for c in _clusters():
        if c.port == POSTGRES_PORT and c.name != POSTGRES_CLUSTER and c.online:
            hint = (
                f"It is PostgreSQL cluster {c.version}/{c.name}; remove it with "
                f"`pg_dropcluster --stop {c.version} {c.name}` (or stop it with "
                f"`pg_ctlcluster {c.version} {c.name} stop`), then retry."
            )
    check_port_free(POSTGRES_PORT, NAME, hint)


PSQL_TIMEOUT_S = 30.0
"""A psql call that hangs (a server stuck in recovery, a lock) ends ``up`` with an error."""


def _psql_admin(sql: str, db: str = "postgres") -> str:
    """Run SQL as the cluster's superuser. It goes through stdin: it may hold a password,
    which a command line would show to every user (``ps``)."""
    cmd = ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-p", str(POSTGRES_PORT),
           "-d", db, "-f", "-"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    try:
        return run(cmd, "postgres: psql", cwd=Path("/"), stdin=sql,
                   timeout=PSQL_TIMEOUT_S).strip()
    except ServiceError as e:  # psql quotes a failed statement's line, password and all
        raise ServiceError(str(e).replace(POSTGRES_TLS_PASSWORD, "**********")) from None


def _logs_in(user: str, password: str, params: str = "") -> bool:
    """Whether ``user`` logs in now (the password in the environment, not on the command
    line); a server that does not answer within 5 s counts as no."""
    dsn = (f"host={HOST} port={POSTGRES_PORT} dbname={POSTGRES_DB} user={user} "
           f"connect_timeout=5 {params}")
    try:
        probe = subprocess.run(["psql", dsn, "-X", "-tAc", "select 1"], capture_output=True,
                               text=True, check=False, timeout=15, stdin=subprocess.DEVNULL,
                               env=dict(os.environ, PGPASSWORD=password))
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def _ensure_role_and_db() -> None:
    """Create role and database once; skipped when the DSN already logs in."""
    if _logs_in(POSTGRES_USER, POSTGRES_PASSWORD):
        return
    progress(f"postgres: creating role and database {POSTGRES_DB!r}")
    _psql_admin(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
        f"'{POSTGRES_USER}') THEN CREATE ROLE {POSTGRES_USER} LOGIN CREATEDB PASSWORD "
        f"'{POSTGRES_PASSWORD}'; ELSE ALTER ROLE {POSTGRES_USER} LOGIN CREATEDB PASSWORD "
        f"'{POSTGRES_PASSWORD}'; END IF; END $$;"
    )
    exists = _psql_admin(f"SELECT 1 FROM pg_database WHERE datname = '{POSTGRES_DB}'")
    if exists != "1":
        _psql_admin(f"CREATE DATABASE {POSTGRES_DB} OWNER {POSTGRES_USER}")


def up() -> ServiceStatus:
    with locked(run_dir(NAME) / ".lock"):
        current = status()
        if current.running:
            _ensure_tls()
            return current
        ver = _version() or _install()
        cluster = _ours()
        if cluster is None:
            _check_port(ver)
            progress(
                f"postgres: creating cluster {ver}/{POSTGRES_CLUSTER} on {HOST}:{POSTGRES_PORT}"
            )
            run(
                [
                    "pg_createcluster",
                    ver,
                    POSTGRES_CLUSTER,
                    "-p",
                    str(POSTGRES_PORT),
                    "--start-conf=manual",
                ],
                "postgres: pg_createcluster",
            )
            _write_listen_conf(ver)
            cluster = _ours()
            assert cluster is not None
        elif cluster.port != POSTGRES_PORT:
            raise ServiceError(
                f"postgres: cluster {ver}/{POSTGRES_CLUSTER} is configured for port "
                f"{cluster.port}, expected {POSTGRES_PORT}. Recreate it with "
                f"`pg_dropcluster --stop {ver} {POSTGRES_CLUSTER}` and run `up` again."
            )
        if not cluster.online:
            _check_port(ver)
            progress(f"postgres: starting cluster {ver}/{POSTGRES_CLUSTER}")
            run(["pg_ctlcluster", ver, POSTGRES_CLUSTER, "start"], "postgres: pg_ctlcluster start")
        if not wait_until(_ready, START_TIMEOUT):
            log = Path(cluster.log)
            raise ServiceError(
                f"postgres: not ready on {HOST}:{POSTGRES_PORT} within "
                f"{START_TIMEOUT:.0f}s. Log {log} ends with:\n{log_tail(log)}"
            )
        _ensure_role_and_db()
        _ensure_tls()
        return status()


def _ensure_tls() -> None:
    """TLS from the dev CA and the TLS-only role, on a new cluster or one made before them.

    A TLS login that already works (verified against the dev CA) means all is in place: the
    cluster's configuration (root's or postgres's, 0700) is then not even read, so any user
    may run ``up`` on a warm machine."""
    pki = dev_pki()
    verified = f"sslmode=verify-full sslrootcert={pki.ca}"
    if _logs_in(POSTGRES_TLS_USER, POSTGRES_TLS_PASSWORD, verified):
        return
    cluster = _ours()
    assert cluster is not None
    conf_dir = Path("/etc/postgresql") / cluster.version / cluster.name

    def reload() -> None:
        run(["pg_ctlcluster", cluster.version, cluster.name, "reload"],
            "postgres: pg_ctlcluster reload")

    ensure_tls(conf_dir, pki, reload)
    _psql_admin(role_sql(), POSTGRES_DB)


def down() -> None:
    with locked(run_dir(NAME) / ".lock"):
        cluster = _ours()
        if cluster is not None and cluster.online:
            progress(f"postgres: stopping cluster {cluster.version}/{cluster.name}")
            run(
                ["pg_ctlcluster", cluster.version, cluster.name, "stop"],
                "postgres: pg_ctlcluster stop",
            )
