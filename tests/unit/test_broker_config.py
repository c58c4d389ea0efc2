"""The broker manager's pure parts: config rendering, bootstrap resolution, state handling, the jar
cache's completion marker, the CLI's failure paths, and TopicSpec. No JVM, no network."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import broker as broker_mod
from engine.broker import (
    DEFAULT_HEAP,
    KAFKA_VERSION,
    NOT_RUNNING_MSG,
    BrokerError,
    BrokerNotRunning,
    LocalBroker,
    new_cluster_id,
    parse_properties,
    read_state,
    render_log4j2_config,
    render_server_properties,
    resolve_bootstrap,
    tail_lines,
)
from engine.cli_broker import broker_app
from engine.topics import TopicSpec, ensure_topics


@pytest.fixture(autouse=True)
def _no_external_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAFKA_HEAP_OPTS", raising=False)


def write_state(broker: LocalBroker, pid: int, bootstrap: str = "127.0.0.1:19092") -> None:
    broker.broker_dir.mkdir(parents=True, exist_ok=True)
    broker.state_file.write_text(json.dumps({"pid": pid, "bootstrap": bootstrap, "controller_port": 19093,
                                             "started_at": 0.0, "heap": DEFAULT_HEAP}))


@pytest.fixture
def fake_broker_process(tmp_path: Path) -> Iterator[tuple[LocalBroker, int]]:
    """A live process whose command line names the home's server.properties, as the JVM's does."""
    broker = LocalBroker(home=tmp_path / "home", cache=tmp_path / "cache")
    broker.broker_dir.mkdir(parents=True)
    marker = str(broker.config_file.resolve())
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()", marker],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # Until the child has exec'd Python and started, /proc shows the forked test process
        # (another command line, a smaller RSS): wait for its first output line.
        assert proc.stdout is not None and proc.stdout.readline() == b"\n"
        yield broker, proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- rendering -------------------------------------------------------------------------------

def test_server_properties_single_node_kraft_with_transactions(tmp_path: Path) -> None:
    props = parse_properties(render_server_properties(39092, 39093, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:39093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_log4j2_config_warn_to_file(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    props = parse_properties(render_log4j2_config(log))
    assert props["rootLogger.level"] == "WARN"
    assert props["appender.file.fileName"] == str(log)
    assert props["logger.server.name"] == "kafka.server.KafkaRaftServer"
    assert props["logger.server.level"] == "INFO"


def test_cluster_id_is_kafka_uuid_shaped() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_java_command_heap_and_class_data_sharing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = tmp_path / "java"
    java.write_text("")
    (tmp_path / "cache" / "libs").mkdir(parents=True)
    (tmp_path / "cache" / "libs" / "b.jar").write_text("")
    (tmp_path / "cache" / "libs" / "a.jar").write_text("")
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx300m -Xms100m")
    broker = LocalBroker(home=tmp_path / "home", cache=tmp_path / "cache")
    cmd = broker.java_command(str(java), broker.libs_dir)
    assert cmd[:3] == [str(java), "-Xmx300m", "-Xms100m"]
    assert cmd[-2:] == ["kafka.Kafka", str(broker.config_file.resolve())]
    assert cmd[cmd.index("-cp") + 1].endswith(f"a.jar{os.pathsep}{broker.libs_dir.resolve()}/b.jar")
    assert any(a.startswith("-XX:ArchiveClassesAtExit=") for a in cmd), "no archive yet: dump one at exit"
    archive = broker.cds_archive(str(java))
    archive.write_text("x")
    cmd = broker.java_command(str(java), broker.libs_dir)
    assert f"-XX:SharedArchiveFile={archive}" in cmd
    assert not any("CDS" in a or "Archive" in a for a in
                   LocalBroker(home=tmp_path, cache=tmp_path / "cache", class_data_sharing=False)
                   .java_command(str(java), broker.libs_dir))


def test_default_heap_when_env_unset(tmp_path: Path) -> None:
    assert LocalBroker(home=tmp_path).heap == DEFAULT_HEAP == "-Xmx512m -Xms256m"


# -- bootstrap resolution --------------------------------------------------------------------

def test_nothing_running_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerNotRunning) as err:
        resolve_bootstrap(tmp_path)
    assert str(err.value) == NOT_RUNNING_MSG
    assert "streamscore broker start" in NOT_RUNNING_MSG and "KAFKA_BOOTSTRAP_SERVERS" in NOT_RUNNING_MSG


def test_env_wins_over_a_running_local_broker(fake_broker_process: tuple[LocalBroker, int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    broker, pid = fake_broker_process
    write_state(broker, pid, "127.0.0.1:19092")
    assert resolve_bootstrap(broker.home) == "127.0.0.1:19092"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-a:9092,kafka-b:9092")
    assert resolve_bootstrap(broker.home) == "kafka-a:9092,kafka-b:9092"


def test_home_defaults_to_streamscore_home(fake_broker_process: tuple[LocalBroker, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    broker, pid = fake_broker_process
    write_state(broker, pid, "127.0.0.1:29092")
    monkeypatch.setenv("STREAMSCORE_HOME", str(broker.home))
    assert resolve_bootstrap() == "127.0.0.1:29092"


def test_stale_state_file_is_reported(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    write_state(broker, dead_pid())
    with pytest.raises(BrokerNotRunning, match="stale broker state .* is not running"):
        resolve_bootstrap(tmp_path)


def test_reused_pid_of_another_program_is_not_our_broker(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    write_state(broker, os.getpid())  # alive, but its command line does not name our config
    with pytest.raises(BrokerNotRunning, match="stale"):
        resolve_bootstrap(tmp_path)
    st = broker.status()
    assert st["running"] is False and st["stale_pid"] == os.getpid()
    assert broker.stop() is False, "must not signal a process that is not our broker"
    assert not broker.state_file.exists(), "stop() cleans a stale state file"


def test_status_of_running_broker(fake_broker_process: tuple[LocalBroker, int]) -> None:
    broker, pid = fake_broker_process
    write_state(broker, pid)
    st = broker.status(probe=False)
    assert st["running"] is True and st["pid"] == pid and st["bootstrap"] == "127.0.0.1:19092"
    assert st["rss_mb"] is not None and st["rss_mb"] > 1
    assert st["uptime_s"] > 0


def test_stop_and_status_when_nothing_runs(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    assert broker.stop() is False
    assert broker.stop() is False
    assert broker.status() == {"running": False, "home": str(broker.broker_dir), "log_file": str(broker.log_file)}


def test_torn_state_file_reads_as_absent(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    broker.broker_dir.mkdir(parents=True)
    broker.state_file.write_text('{"pid": 12')
    assert read_state(broker.broker_dir) is None


# -- ports -----------------------------------------------------------------------------------

def test_previous_ports_reused_when_free_else_fresh(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path)
    broker.broker_dir.mkdir(parents=True)
    first = broker._choose_ports()
    assert first[0] != first[1]
    assert broker._choose_ports() == first
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", first[0]))
        blocker.listen()
        second = broker._choose_ports()
    assert first[0] not in second and second[0] != second[1]
    assert json.loads(broker.ports_file.read_text()) == {"port": second[0], "controller_port": second[1]}


# -- jar cache -------------------------------------------------------------------------------

SYSTEM_PATH = "/usr/bin:/bin"  # for the fake mvn's mkdir/touch; the fake comes first on PATH


def fake_mvn(bin_dir: Path, exit_code: int) -> Path:
    """An `mvn` that records its calls, and on success "copies" the Kafka jar into -DoutputDirectory."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "mvn"
    script.write_text(f"""#!/bin/sh
echo call >> "{bin_dir}/calls"
echo "[ERROR] line one of the failure"
echo "[ERROR] could not resolve org.apache.kafka:kafka_2.13"
for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${{a#-DoutputDirectory=}}";; esac; done
if [ {exit_code} -eq 0 ]; then mkdir -p "$out" && touch "$out/kafka_2.13-{KAFKA_VERSION}.jar"; fi
exit {exit_code}
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def calls(bin_dir: Path) -> int:
    path = bin_dir / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_missing_pom_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="broker pom not found"):
        LocalBroker(home=tmp_path, cache=tmp_path / "c", pom=tmp_path / "nope.xml").ensure_jars()


def test_missing_mvn_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BrokerError, match="`mvn` .* is not on PATH"):
        LocalBroker(home=tmp_path, cache=tmp_path / "c", quiet=True).ensure_jars()


def test_failed_fetch_shows_maven_output_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_mvn(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{SYSTEM_PATH}")
    broker = LocalBroker(home=tmp_path, cache=tmp_path / "c", quiet=True)
    with pytest.raises(BrokerError, match="(?s)exit 1.*could not resolve org.apache.kafka"):
        broker.ensure_jars()
    assert not broker.jars_ready()
    with pytest.raises(BrokerError):
        broker.ensure_jars()
    assert calls(bin_dir) == 2, "a failed fetch must be retried"


def test_completed_fetch_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir = fake_mvn(tmp_path / "bin", exit_code=0)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{SYSTEM_PATH}")
    broker = LocalBroker(home=tmp_path, cache=tmp_path / "c")
    assert broker.ensure_jars() == broker.libs_dir
    assert "fetching Kafka 4.1.1 jars from Maven Central (first run only" in capsys.readouterr().err
    assert broker.jars_ready()
    assert broker.ensure_jars() == broker.libs_dir
    assert calls(bin_dir) == 1, "a completed cache must not run Maven again"


def test_cache_of_another_pom_is_refetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_mvn(tmp_path / "bin", exit_code=0)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{SYSTEM_PATH}")
    pom = tmp_path / "pom.xml"
    pom.write_text("<project>v1</project>")
    LocalBroker(home=tmp_path, cache=tmp_path / "c", pom=pom, quiet=True).ensure_jars()
    pom.write_text("<project>v2</project>")
    broker = LocalBroker(home=tmp_path, cache=tmp_path / "c", pom=pom, quiet=True)
    assert not broker.jars_ready()
    broker.ensure_jars()
    assert calls(bin_dir) == 2


def test_start_without_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BrokerError, match="`java` is not on PATH"):
        LocalBroker(home=tmp_path, cache=tmp_path / "c").start()


def test_storage_formatted_once(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path, cache=tmp_path / "c")
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text("node.id=1\n")
    broker._format_storage(str(tmp_path / "no-such-java"), broker.libs_dir)  # would fail if it ran
    (broker.data_dir / "meta.properties").unlink()
    with pytest.raises(OSError):
        broker._format_storage(str(tmp_path / "no-such-java"), broker.libs_dir)


def test_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_quiet_admin_probe_is_silent(capfd: pytest.CaptureFixture[str]) -> None:
    """librdkafka's "Connection refused" spam must not reach stderr while waiting for the broker."""
    port = broker_mod.free_port()
    assert broker_mod.broker_answers(f"127.0.0.1:{port}", timeout=0.5) is False
    assert broker_mod.broker_answers(f"127.0.0.1:{port}", timeout=0.5) is False
    captured = capfd.readouterr()
    assert "Connection refused" not in captured.err + captured.out


# -- CLI -------------------------------------------------------------------------------------

@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMSCORE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cli_status_stop_logs_without_broker(cli_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(broker_app, ["status"])
    assert result.exit_code == 1 and "not running" in result.output
    result = runner.invoke(broker_app, ["status", "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["running"] is False
    result = runner.invoke(broker_app, ["stop"])
    assert result.exit_code == 0 and "no broker running" in result.output
    result = runner.invoke(broker_app, ["logs"])
    assert result.exit_code == 1 and "no log at" in result.output


def test_cli_start_failure_exits_nonzero(cli_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = CliRunner().invoke(broker_app, ["start"])
    assert result.exit_code == 1
    assert "error:" in result.output and "java" in result.output


def test_cli_logs_tail(cli_home: Path) -> None:
    broker = LocalBroker()
    broker.broker_dir.mkdir(parents=True)
    broker.log_file.write_text("".join(f"l{i}\n" for i in range(10)))
    result = CliRunner().invoke(broker_app, ["logs", "-n", "2"])
    assert result.exit_code == 0 and result.output.splitlines() == ["l8", "l9"]


def test_cli_help_for_every_command() -> None:
    for command in ("start", "stop", "status", "logs"):
        result = CliRunner().invoke(broker_app, [command, "--help"])
        assert result.exit_code == 0 and len(result.output) > 100, command


# -- topics (no broker) ----------------------------------------------------------------------

def test_topic_spec_compacted_and_validation() -> None:
    assert TopicSpec("t", 4, compacted=True).topic_config() == {"cleanup.policy": "compact"}
    assert TopicSpec("t", config={"retention.ms": "1000"}).topic_config() == {"retention.ms": "1000"}
    assert TopicSpec("t", compacted=True, config={"cleanup.policy": "compact,delete"}).topic_config() == {
        "cleanup.policy": "compact,delete"}
    with pytest.raises(ValueError, match="conflicts"):
        TopicSpec("t", compacted=True, config={"cleanup.policy": "delete"})
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        TopicSpec("t", 0)
    with pytest.raises(ValueError, match="non-empty"):
        TopicSpec("")


def test_ensure_topics_rejects_duplicates_and_unreachable_cluster() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ensure_topics("127.0.0.1:1", [TopicSpec("a"), TopicSpec("a")])
    assert ensure_topics("127.0.0.1:1", []) == []
    with pytest.raises(broker_mod.BrokerUnreachable, match="cannot reach Kafka at 127.0.0.1:.* within 0.5 s"):
        ensure_topics(f"127.0.0.1:{broker_mod.free_port()}", [TopicSpec("x")], timeout=0.5)
