"""Read the engine's scores with plain confluent-kafka and the typed reader; print the high ones.

    python examples/downstream/plain_consumer.py --bootstrap 127.0.0.1:9092 --topic scores \
        --threshold 0.5 --idle-exit 10

Prints one JSON line per answering score (champion or canary, not shadow) at or above the
threshold, and a summary line to stderr. Reads with isolation.level=read_committed, so with the
engine's exactly-once guarantee each event appears once. Run from the repository root (or with
streamscore installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.reader import read_scores, score_consumer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print high scores from the engine's scores topic.")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="scores")
    parser.add_argument("--group", default="scores-printer")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-records", type=int, default=None, help="stop after reading this many records")
    parser.add_argument("--idle-exit", type=float, default=None, help="stop after this many seconds without records")
    args = parser.parse_args(argv)

    consumer = score_consumer(args.bootstrap, args.group, args.topic)
    seen = high = 0
    try:
        for record in read_scores(consumer, max_records=args.max_records, idle_timeout_s=args.idle_exit):
            seen += 1
            if record.answer and record.score >= args.threshold:
                high += 1
                sys.stdout.buffer.write(orjson.dumps({
                    "event_id": record.event_id, "entity": record.entity, "score": record.score,
                    "model": f"{record.model_name} v{record.model_version}", "event_ts": record.event_ts,
                }) + b"\n")
        sys.stdout.flush()
    finally:
        consumer.close()  # commits the offsets of what was read
    print(f"read {seen} score records, {high} at or above {args.threshold}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
