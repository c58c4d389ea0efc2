"""The local single-node Apache Kafka 4.1.1 broker (KRaft, broker + controller in one JVM).

No Docker, no Kafka download: `broker/pom.xml` names Kafka's jars on Maven Central, Maven copies
them once into a jar cache, and the broker runs as plain `java -cp <cache>/libs/*.jar kafka.Kafka
server.properties` with a generated `server.properties` (transactions and consumer groups work on
one node) and a generated Log4j 2 config (WARN and up, plus the "Kafka Server started" line, into
`broker.log`). The first graceful stop leaves an AppCDS archive of Kafka's classes in the cache;
later starts map it (about twice as fast to start on 2 cores, ~25 MB less RSS).

Layout under the broker home (`$STREAMSCORE_HOME/broker`, default `./.streamscore/broker`):

    server.properties   regenerated on every start (ports may change)
    log4j2.properties   regenerated on every start
    data/               the log directory (formatted once; topics persist between starts)
    ports.json          the ports last chosen, reused by the next start when still free
    state.json          present only while a broker started here runs: pid, bootstrap, ...
    broker.log          Kafka's log;  kafka.out: the JVM's own stdout/stderr (JVM-level failures)

Jar cache (`$STREAMSCORE_KAFKA_CACHE`, default `<repo>/.cache/kafka-4.1.1`): libs/, COMPLETE (the
pom's digest, written after a successful fetch), cds/ (class-data-sharing archives).

Bootstrap servers for every command (`resolve_bootstrap`): $KAFKA_BOOTSTRAP_SERVERS, else the
running local broker's state.json, else BrokerNotRunning.

Measured on the project machine (2 cores, Java 17, default heap; other jobs were running, load
average 3-4, so an idle machine is faster), from `start()` until an AdminClient gets metadata:
    cold, empty jar cache and empty ~/.m2:     ~40 s  (Maven ~33 s incl. its own plugins; 46 jars, 43 MB)
    cold, empty jar cache, ~/.m2 populated:    ~17 s  (Maven copy ~7 s, format ~2 s, JVM start ~7 s)
    warm, formatted home:                      2.1-4.3 s (with the CDS archive; 7-12 s without)
    warm, fresh home (the test session):       ~3 s, format included
    stop (SIGTERM, graceful):                  0.4-1.0 s; the first stop after a cold start ~5 s
                                               (the JVM writes the CDS archive)
    RSS: 170-200 MB after start, ~215 MB after the integration suites
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.1.1"
DEFAULT_HEAP = "-Xmx512m -Xms256m"
HOST = "127.0.0.1"
NODE_ID = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
POM_PATH = REPO_ROOT / "broker" / "pom.xml"
KAFKA_MAIN = "kafka.Kafka"
NOT_RUNNING_MSG = ("no Kafka broker: run `streamscore broker start` (or `make broker`) "
                   "or set KAFKA_BOOTSTRAP_SERVERS")
JVM_FLAGS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
             "-XX:+ExplicitGCInvokesConcurrent", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")


class BrokerError(RuntimeError):
    """The local broker could not be prepared, started or stopped; the message says why."""


class BrokerNotRunning(BrokerError):
    """No bootstrap servers configured and no local broker running."""


class BrokerUnreachable(BrokerError):
    """The configured Kafka cluster did not answer within the connect timeout."""


DEFAULT_CONNECT_TIMEOUT_S = 15.0


def connect_timeout_s() -> float:
    """How long a command waits for the Kafka cluster to answer before giving up:
    `$STREAMSCORE_CONNECT_TIMEOUT` seconds, default 15."""
    raw = os.environ.get("STREAMSCORE_CONNECT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise BrokerError(f"STREAMSCORE_CONNECT_TIMEOUT must be seconds in (0, 600], got {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Defaults and pure helpers
# ---------------------------------------------------------------------------------------------

def default_home() -> Path:
    """`$STREAMSCORE_HOME` or `./.streamscore` (the broker lives in its `broker/` subdirectory)."""
    return Path(os.environ.get("STREAMSCORE_HOME", ".streamscore"))


def default_cache() -> Path:
    """`$STREAMSCORE_KAFKA_CACHE`, else `.cache/kafka-4.1.1` in the repository (next to broker/pom.xml),
    so every working directory and the test suite share one jar cache."""
    env = os.environ.get("STREAMSCORE_KAFKA_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / f"kafka-{KAFKA_VERSION}"


def render_server_properties(port: int, controller_port: int, data_dir: Path, node_id: int = NODE_ID) -> str:
    """server.properties of a combined broker+controller node on 127.0.0.1 with a static
    one-voter quorum. Internal topics use replication 1 so transactions and groups work on one
    node; topics are only created explicitly (auto.create.topics.enable=false)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        # A dead producer's open transaction blocks read_committed readers of every partition it
        # wrote to until the broker aborts it: at transaction.timeout.ms, checked this often
        # (default 10 s, which would double the stall after a crash).
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
        "auto.create.topics.enable": "false",
    }
    lines = [f"# generated by streamscore (engine/broker.py) for Kafka {KAFKA_VERSION}; rewritten on every start"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """The key=value lines of a Java properties text (comments and blanks skipped; no escapes)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def render_log4j2_config(log_file: Path) -> str:
    """Log4j 2 properties: WARN and above into `log_file` (Kafka's INFO is ~500 lines per start),
    plus KafkaRaftServer at INFO so `broker logs` shows "Kafka Server started"."""
    return "\n".join([
        "# generated by streamscore (engine/broker.py)",
        "status = error",
        "name = streamscore-broker",
        "appender.file.type = File",
        "appender.file.name = FILE",
        f"appender.file.fileName = {log_file}",
        "appender.file.append = true",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = WARN",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.server.name = kafka.server.KafkaRaftServer",
        "logger.server.level = INFO",
        "",
    ])


def new_cluster_id() -> str:
    """A Kafka cluster id, as `kafka-storage.sh random-uuid` makes it (base64url of 16 random bytes,
    unpadded, never starting with '-'), without paying for a JVM."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if nothing is bound to host:port (TIME_WAIT leftovers do not count, as for Kafka)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST, exclude: tuple[int, ...] = ()) -> int:
    """A port the OS reports free right now (racy by nature; the broker fails loudly if stolen)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port


def classpath(libs: Path) -> str:
    """The jars of `libs` as an explicit, sorted classpath (stable across runs, unlike `libs/*`)."""
    return os.pathsep.join(str(jar) for jar in sorted(libs.resolve().glob("*.jar")))


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file ([] if it does not exist); reads at most ~1 MB."""
    if lines <= 0 or not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1_048_576))
        data = fh.read()
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_matches(pid: int, needle: str) -> bool:
    """True if `pid` is alive and its command line contains `needle` (guards against pid reuse,
    e.g. a state file that survived a reboot). Without procfs only liveness is checked."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return needle in cmdline


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB from /proc/<pid>/status (None if unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def quiet_admin(bootstrap: str, **extra: Any) -> Any:
    """An AdminClient that never writes librdkafka's connection errors to stderr."""
    from confluent_kafka.admin import AdminClient

    silent = logging.getLogger("streamscore.broker.librdkafka")
    silent.setLevel(logging.CRITICAL)
    silent.propagate = False
    if not silent.handlers:
        silent.addHandler(logging.NullHandler())
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": silent, **extra})


def broker_answers(bootstrap: str, timeout: float = 2.0, admin: Any = None) -> bool:
    """True if a broker at `bootstrap` returns metadata listing at least one broker within `timeout`."""
    from confluent_kafka import KafkaException

    admin = admin if admin is not None else quiet_admin(bootstrap)
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, held for the block: serialises concurrent
    starts/stops of one home and concurrent fetches into one jar cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: ask Linux to SIGTERM the child when the parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerState:
    """What `state.json` records about a running broker started from a home."""

    pid: int
    bootstrap: str
    controller_port: int
    started_at: float
    heap: str

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


def read_state(broker_dir: Path) -> BrokerState | None:
    """The state file of `broker_dir`, or None if absent or unreadable (a torn write)."""
    path = broker_dir / "state.json"
    try:
        raw = json.loads(path.read_text())
        return BrokerState(int(raw["pid"]), str(raw["bootstrap"]), int(raw["controller_port"]),
                           float(raw["started_at"]), str(raw["heap"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def resolve_bootstrap(home: Path | str | None = None) -> str:
    """Bootstrap servers for clients: `$KAFKA_BOOTSTRAP_SERVERS` if set, else the local broker
    running from `home` (default `default_home()`). Raises BrokerNotRunning otherwise, saying so
    explicitly when a stale state file (its process is gone) was found."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        return env
    broker = LocalBroker(home=home)
    state = read_state(broker.broker_dir)
    if state is None:
        raise BrokerNotRunning(NOT_RUNNING_MSG)
    if not broker.owns(state.pid):
        raise BrokerNotRunning(f"stale broker state in {broker.state_file}: pid {state.pid} is not running "
                               f"(the broker died or the machine restarted); {NOT_RUNNING_MSG}")
    return state.bootstrap


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------

class LocalBroker:
    """A single-node Kafka broker whose data and state live under `<home>/broker/`.

    One home runs at most one broker; `start` and `stop` are idempotent and may be called from
    different processes (the state file and a lock file coordinate them). The JVM runs in its own
    session (process group), detached from the caller's terminal, so it outlives the CLI that
    started it — unless `die_with_parent=True` (used by the test suite), which makes Linux
    SIGTERM it if the starting process dies without stopping it.
    """

    def __init__(self, home: Path | str | None = None, cache: Path | str | None = None,
                 pom: Path | str | None = None, heap: str | None = None,
                 die_with_parent: bool = False, quiet: bool = False, class_data_sharing: bool = True) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.cache = Path(cache) if cache is not None else default_cache()
        self.pom = Path(pom) if pom is not None else POM_PATH
        self.heap = heap or os.environ.get("KAFKA_HEAP_OPTS", "").strip() or DEFAULT_HEAP
        self.die_with_parent = die_with_parent
        self.quiet = quiet
        self.class_data_sharing = class_data_sharing
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths --------------------------------------------------------------------------------
    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def data_dir(self) -> Path:
        return self.broker_dir / "data"

    @property
    def state_file(self) -> Path:
        return self.broker_dir / "state.json"

    @property
    def ports_file(self) -> Path:
        return self.broker_dir / "ports.json"

    @property
    def config_file(self) -> Path:
        return self.broker_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.broker_dir / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        """Kafka's own log (WARN and up, plus startup lines)."""
        return self.broker_dir / "broker.log"

    @property
    def stdout_file(self) -> Path:
        """The JVM's stdout/stderr (JVM-level failures land here, not in broker.log)."""
        return self.broker_dir / "kafka.out"

    @property
    def libs_dir(self) -> Path:
        return self.cache / "libs"

    @property
    def _marker(self) -> Path:
        return self.cache / "COMPLETE"

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    # -- jars ---------------------------------------------------------------------------------
    def _pom_digest(self) -> str:
        return hashlib.sha256(self.pom.read_bytes()).hexdigest()

    def jars_ready(self) -> bool:
        """True if the cache holds a complete fetch of the current pom's jars."""
        try:
            return (self._marker.read_text().strip() == self._pom_digest()
                    and any(self.libs_dir.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")))
        except OSError:
            return False

    def ensure_jars(self) -> Path:
        """Make sure the Kafka jars are in the cache and return the libs directory.

        The first call runs Maven (`dependency:copy-dependencies`, ~20 s from Maven Central); the
        completion marker (the pom's digest) is written only after success, so an interrupted or
        failed fetch is redone from scratch and a changed pom refetches. Raises BrokerError if the
        pom is missing, `mvn` is not on PATH, or Maven fails (with the tail of its output)."""
        if not self.pom.is_file():
            raise BrokerError(f"broker pom not found at {self.pom}: the Kafka jars are assembled from it "
                              "(is this a complete streamscore checkout?)")
        with file_lock(self.cache / ".lock"):
            if self.jars_ready():
                return self.libs_dir
            self._fetch_jars()
        return self.libs_dir

    def _fetch_jars(self) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("`mvn` (Apache Maven) is not on PATH: it fetches the Kafka jars once "
                              f"into {self.cache}; install Maven (e.g. `apt-get install maven`)")
        self._marker.unlink(missing_ok=True)
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        self._say(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (first run only, ~20 s)…")
        t0 = time.monotonic()
        cmd = [mvn, "-q", "-B", "-f", str(self.pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={self.libs_dir}"]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                check=False)
        if result.returncode != 0 or not any(self.libs_dir.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            tail = "\n".join(result.stdout.decode("utf-8", "replace").splitlines()[-30:])
            why = f"exit {result.returncode}" if result.returncode else f"no kafka_2.13-{KAFKA_VERSION}.jar copied"
            raise BrokerError(f"Maven could not fetch the Kafka jars ({why}): {' '.join(cmd)}\n{tail}")
        self._marker.write_text(self._pom_digest() + "\n")
        n = len(list(self.libs_dir.glob("*.jar")))
        self._say(f"fetched {n} jars into {self.libs_dir} in {time.monotonic() - t0:.1f} s")

    # -- lifecycle ----------------------------------------------------------------------------
    def owns(self, pid: int) -> bool:
        """True if `pid` is alive and is this home's broker JVM (its command line names our config)."""
        return process_matches(pid, str(self.config_file.resolve()))

    def running_state(self) -> BrokerState | None:
        """The state of this home's running broker, or None (a stale state file is removed)."""
        state = read_state(self.broker_dir)
        if state is None:
            return None
        if not self.owns(state.pid):
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    def start(self, timeout: float = 60.0) -> str:
        """Start the broker (or find it running) and return its bootstrap "127.0.0.1:PORT" once an
        AdminClient gets metadata from it.

        Idempotent: a broker already running from this home is waited for (up to `timeout`) and
        reused. Otherwise fetches jars if needed, picks ports (the previous ones when still free),
        formats the storage once, launches the JVM detached and waits. If the JVM exits or
        `timeout` passes, kills what it started and raises BrokerError with the log's tail."""
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.broker_dir / ".lock"):
            state = self.running_state()
            if state is not None:
                return self._await_existing(state, timeout)
            java = shutil.which("java")
            if java is None:
                raise BrokerError("`java` is not on PATH: the local Kafka broker needs a Java 17+ runtime "
                                  "(e.g. `apt-get install openjdk-17-jre-headless`)")
            libs = self.ensure_jars()
            port, controller_port = self._choose_ports()
            self._write_configs(port, controller_port)
            self._format_storage(java, libs)
            return self._launch(java, libs, port, controller_port, timeout)

    def _await_existing(self, state: BrokerState, timeout: float) -> str:
        admin = quiet_admin(state.bootstrap)
        deadline = time.monotonic() + timeout
        while not broker_answers(state.bootstrap, timeout=min(2.0, timeout), admin=admin):
            if not self.owns(state.pid):
                raise BrokerError(f"the broker (pid {state.pid}) exited while starting up\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"a broker (pid {state.pid}) is running from {self.home} but not answering on "
                                  f"{state.bootstrap} after {timeout:.0f} s; try `streamscore broker stop`\n"
                                  f"{self._log_tail()}")
            time.sleep(0.2)  # poll interval
        return state.bootstrap

    def _choose_ports(self) -> tuple[int, int]:
        """The ports of the previous start if both are free (the data persists, clients may have
        them configured), otherwise two fresh free ports. Remembered in ports.json."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            prev = json.loads(self.ports_file.read_text())
            port, cport = int(prev["port"]), int(prev["controller_port"])
            if port != cport and port_is_free(port) and port_is_free(cport):
                return port, cport
        port = free_port()
        cport = free_port(exclude=(port,))
        _write_json(self.ports_file, {"port": port, "controller_port": cport})
        return port, cport

    def _write_configs(self, port: int, controller_port: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render_server_properties(port, controller_port, self.data_dir.resolve()))
        self.log4j_file.write_text(render_log4j2_config(self.log_file.resolve()))

    def _format_storage(self, java: str, libs: Path) -> None:
        """`kafka-storage format` once per home; skipped when data/meta.properties exists."""
        if (self.data_dir / "meta.properties").exists():
            return
        # A short-lived tool: C1 only and the serial GC halve its ~2 s on 2 cores.
        cmd = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
               f"-Dlog4j2.configurationFile={self.log4j_file.resolve()}", "-cp", classpath(libs),
               "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.config_file.resolve())]
        try:
            result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, check=False, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting the broker storage in {self.data_dir} took over 120 s") from exc
        if result.returncode != 0:
            out = "\n".join(result.stdout.decode("utf-8", "replace").splitlines()[-30:])
            raise BrokerError(f"formatting the broker storage in {self.data_dir} failed "
                              f"(exit {result.returncode}):\n{out}")

    # -- class data sharing -----------------------------------------------------------------
    def cds_archive(self, java: str) -> Path:
        """The AppCDS archive of this jar set and JVM in the cache: loading Kafka's ~6k classes
        from it makes the broker start ~40 % faster on 2 cores and saves ~20 MB RSS. Keyed by the
        JVM binary and the pom, so a changed JVM or jar set gets its own archive."""
        exe = Path(java).resolve()
        st = exe.stat()
        key = hashlib.sha256(f"{exe}|{st.st_size}|{st.st_mtime_ns}|{self._pom_digest()}".encode()).hexdigest()
        return self.cache / "cds" / f"kafka-{KAFKA_VERSION}-{key[:16]}.jsa"

    def _cds_dump(self, archive: Path) -> Path:
        """Where a broker of this home dumps a new archive at exit (installed by `stop`)."""
        tag = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return archive.with_name(f"{archive.stem}.{tag}.dump")

    def _cds_flag(self, java: str) -> list[str]:
        """Use the archive if present; otherwise have this run dump one when it exits."""
        if not self.class_data_sharing:
            return []
        archive = self.cds_archive(java)
        if archive.is_file():
            return [f"-XX:SharedArchiveFile={archive}"]
        archive.parent.mkdir(parents=True, exist_ok=True)
        return [f"-XX:ArchiveClassesAtExit={self._cds_dump(archive)}"]

    def _install_cds_dump(self, graceful: bool) -> None:
        """After the JVM exited: adopt a dump written by a graceful exit (atomically, so brokers of
        other homes never map a half-written file); discard one cut short by SIGKILL."""
        java = shutil.which("java")
        if not self.class_data_sharing or java is None:
            return
        with contextlib.suppress(OSError):  # an optimisation: never fail a stop over it
            archive = self.cds_archive(java)
            dump = self._cds_dump(archive)
            if dump.is_file() and graceful and dump.stat().st_size > 0:
                os.replace(dump, archive)
                for orphan in archive.parent.glob(f"{archive.stem}.*.dump"):  # of brokers that were killed
                    orphan.unlink(missing_ok=True)
            else:
                dump.unlink(missing_ok=True)

    def java_command(self, java: str, libs: Path) -> list[str]:
        """The command line of the broker JVM (explicit sorted classpath, as CDS requires)."""
        return [java, *self.heap.split(), *JVM_FLAGS, *self._cds_flag(java),
                f"-Dlog4j2.configurationFile={self.log4j_file.resolve()}",
                f"-Dkafka.logs.dir={self.broker_dir.resolve()}",
                "-cp", classpath(libs), KAFKA_MAIN, str(self.config_file.resolve())]

    def _launch(self, java: str, libs: Path, port: int, controller_port: int, timeout: float) -> str:
        bootstrap = f"{HOST}:{port}"
        with self.stdout_file.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting Kafka {KAFKA_VERSION} on "
                      f"{bootstrap}\n".encode())
            out.flush()
            proc = subprocess.Popen(self.java_command(java, libs), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.broker_dir, start_new_session=True,
                                    preexec_fn=_die_with_parent if self.die_with_parent else None)
        self._proc = proc
        state = BrokerState(proc.pid, bootstrap, controller_port, time.time(), self.heap)
        _write_json(self.state_file, asdict(state))
        try:
            self._await_ready(proc, bootstrap, timeout)
        except BaseException:
            self._kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            self._install_cds_dump(graceful=False)
            self.state_file.unlink(missing_ok=True)
            self._proc = None
            raise
        return bootstrap

    def _await_ready(self, proc: subprocess.Popen[bytes], bootstrap: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = quiet_admin(bootstrap)
        while not broker_answers(bootstrap, timeout=0.5, admin=admin):
            if proc.poll() is not None:
                raise BrokerError(f"the Kafka JVM exited with code {proc.returncode} during startup\n"
                                  f"{self._log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka did not answer on {bootstrap} within {timeout:g} s of launch; killed it\n"
                                  f"{self._log_tail()}")
            time.sleep(0.1)  # poll interval: connection refused returns immediately

    def _log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.log_file, self.stdout_file):
            tail = tail_lines(path, lines)
            if tail:
                parts.append(f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no log output in {self.broker_dir})"

    @staticmethod
    def _kill_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait until `pid` has exited (reaping it if it is our child); True if it did."""
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # poll interval: not our child, so no wait() to block on
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker: SIGTERM its process group (graceful shutdown), SIGKILL after `timeout`.
        Removes state.json. Returns True if a broker was stopped, False if none was running
        (idempotent; a stale state file is cleaned up)."""
        with file_lock(self.broker_dir / ".lock"):
            state = self.running_state()
            if state is None:
                return False
            self._kill_group(state.pid, signal.SIGTERM)
            graceful = self._wait_exit(state.pid, timeout)
            if not graceful:
                self._kill_group(state.pid, signal.SIGKILL)
                if not self._wait_exit(state.pid, 10.0):
                    raise BrokerError(f"the broker (pid {state.pid}) survived SIGKILL")
            self._install_cds_dump(graceful)
            self.state_file.unlink(missing_ok=True)
            self._proc = None
            return True

    def status(self, probe: bool = True) -> dict[str, Any]:
        """{running, pid, bootstrap, controller_port, rss_mb, uptime_s, started_at, heap, answering,
        home, log_file}; only running/home/log_file (and stale_pid if a dead broker's state file
        remains) when no broker runs from this home. `probe` asks the broker for metadata (up to
        2 s) to fill `answering`. Read-only: never removes files."""
        base: dict[str, Any] = {"running": False, "home": str(self.broker_dir), "log_file": str(self.log_file)}
        state = read_state(self.broker_dir)
        if state is None or not self.owns(state.pid):
            if state is not None:
                base["stale_pid"] = state.pid
            return base
        base.update(running=True, pid=state.pid, bootstrap=state.bootstrap, controller_port=state.controller_port,
                    rss_mb=rss_mb(state.pid), uptime_s=round(time.time() - state.started_at, 1),
                    started_at=state.started_at, heap=state.heap)
        if probe:
            base["answering"] = broker_answers(state.bootstrap, timeout=2.0)
        return base

    def logs(self, lines: int = 50) -> list[str]:
        """The last `lines` lines of broker.log."""
        return tail_lines(self.log_file, lines)
