"""User errors of the CLI end in one clear line on stderr and a non-zero exit, never a traceback
(issue 12, item 5); `--debug` / STREAMSCORE_DEBUG=1 bring the traceback back.

Each case runs the real `streamscore` entry point in a subprocess, so what is asserted is exactly
what a user sees on stderr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from features.clickstream import clickstream_spec
from models.registry import Registry
from models.testing import make_manifest, small_model_bytes, synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


def streamscore(*args: str, cwd: Path, timeout: float = 60.0, **env: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of `python -m engine.cli *args`."""
    full = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "STREAMSCORE_DEBUG")}
    full.update(STREAMSCORE_HOME=str(cwd / ".streamscore"), PYTHONPATH=str(REPO), **env)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.splitlines()[-n:])


def assert_one_clear_line(stderr: str, *phrases: str) -> None:
    assert "Traceback" not in stderr and "╭" not in stderr, tail(stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), tail(stderr)
    assert all(p in lines[-1] for p in phrases), tail(stderr)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_with_champion(root: Path) -> Path:
    """A registry whose `purchase` champion is a small model over the default spec's columns."""
    spec = clickstream_spec()
    X, y, _, _ = synthetic_dataset(n=500, d=spec.width, seed=1)
    registry = Registry(root)
    version = registry.register("purchase", small_model_bytes(X, y, spec.names),
                                make_manifest(spec.names, feature_spec=spec.hash), reason="test")
    registry.promote("purchase", version, reason="test")
    return root


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """Logs a user might point `train` at, and bad config files."""
    event = {"user_id": "u1", "event_type": "page_view", "ts": 1_767_225_600_000}
    (tmp_path / "no-event-id.jsonl").write_bytes(b"".join(orjson.dumps({**event, "ts": event["ts"] + i}) + b"\n"
                                                          for i in range(50)))
    (tmp_path / "not.parquet").write_bytes(b"this is not parquet\n")
    (tmp_path / "not-gzip.jsonl.gz").write_bytes(b'{"event_id": "e1"}\n')
    (tmp_path / "bad-key.yaml").write_text("max_batch: 10\nbatch_size: 5\n")
    (tmp_path / "bad-yaml.yaml").write_text("max_batch: [1, 2\n")
    return tmp_path


@pytest.mark.parametrize(("args", "code", "phrases"), [
    (["train", "--events", "no-event-id.jsonl"], 1,
     ["no-event-id.jsonl holds no valid events", "'missing_field': 50", "schema.field_map"]),
    (["train", "--events", "not.parquet"], 1, ["not.parquet is not a readable Parquet file"]),
    (["train", "--events", "not-gzip.jsonl.gz"], 1, ["not-gzip.jsonl.gz is not a readable gzip file"]),
    (["train", "--events", "no-event-id.jsonl", "--horizon", "an hour"], 2, ["duration 'an hour' is not like"]),
    (["run", "--config", "bad-key.yaml"], 2, ["unknown config keys ['batch_size']"]),
    (["run", "--config", "bad-yaml.yaml"], 2, ["bad-yaml.yaml is not valid YAML at line 2"]),
    (["features", "show", "--config", "missing.yaml"], 2, ["config file missing.yaml does not exist"]),
    (["run", "--registry", "empty-registry"], 1, ["no model 'purchase'", "streamscore train"]),
], ids=["no-valid-events", "not-parquet", "not-gzip", "bad-duration", "bad-config-key", "bad-yaml",
        "missing-config", "no-model"])
def test_user_errors_end_in_one_clear_line(logs: Path, args: list[str], code: int, phrases: list[str]) -> None:
    rc, _, stderr, _ = streamscore(*args, cwd=logs, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port()}")
    assert rc == code, tail(stderr)
    assert_one_clear_line(stderr, *phrases)


def test_debug_flag_and_variable_show_the_traceback(logs: Path) -> None:
    for extra, env in ((["--debug"], {}), ([], {"STREAMSCORE_DEBUG": "1"})):
        rc, _, stderr, _ = streamscore(*extra, "train", "--events", "no-event-id.jsonl", cwd=logs, **env)
        assert rc == 1 and "Traceback" in stderr and "NoValidEvents: no-event-id.jsonl holds no valid events" in stderr
        assert "locals" not in stderr.lower(), "tracebacks must not print local variables"


def test_unreachable_broker_gives_up_in_bounded_time(tmp_path: Path) -> None:
    """`topics create`, `run` and `gen stream` against a closed port: a clear message within the connect
    timeout (STREAMSCORE_CONNECT_TIMEOUT), not librdkafka's retry lines or a traceback."""
    registry = registry_with_champion(tmp_path / "registry")
    address = f"127.0.0.1:{closed_port()}"
    for args in (["topics", "create"], ["run", "--registry", str(registry), "--idle-exit", "1"],
                 ["gen", "stream", "--topic", "clicks", "--rate", "10", "--seconds", "1"]):
        rc, _, stderr, seconds = streamscore(*args, cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS=address,
                                             STREAMSCORE_CONNECT_TIMEOUT="2")
        assert rc == 1, tail(stderr)
        assert_one_clear_line(stderr, f"cannot reach Kafka at {address} within 2 s", "streamscore broker start")
        assert "%3|" not in stderr, "librdkafka's connection log lines leaked"
        assert seconds < 20, f"{args[0]} took {seconds:.1f} s to give up"


def test_invalid_connect_timeout_is_named(tmp_path: Path) -> None:
    rc, _, stderr, _ = streamscore("topics", "create", cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                                   STREAMSCORE_CONNECT_TIMEOUT="soon")
    assert rc == 1
    assert_one_clear_line(stderr, "STREAMSCORE_CONNECT_TIMEOUT must be seconds")


@pytest.mark.integration
def test_missing_topics_say_how_to_create_them(kafka_bootstrap: str, tmp_path: Path) -> None:
    registry = registry_with_champion(tmp_path / "registry")
    config = tmp_path / "engine.yaml"
    config.write_text(f"input_topic: nope-{time.monotonic_ns()}\nregistry: {registry}\n")
    rc, _, stderr, _ = streamscore("run", "--config", str(config), cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert rc == 1, tail(stderr)
    assert_one_clear_line(stderr, "do not exist", "streamscore topics create")
    rc, _, stderr, _ = streamscore("gen", "stream", "--topic", f"nope-{time.monotonic_ns()}", "--events", "10",
                                   cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert rc == 1, tail(stderr)
    assert_one_clear_line(stderr, "does not exist", "streamscore topics create")
