"""A Faust app downstream of the engine: alert on scores above a threshold.

    ALERT_THRESHOLD=0.8 KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
        python examples/downstream/faust_alerts.py worker -l info

The agent reads the scores topic as `Score` records (a `faust.Record` of the score record,
docs/schemas/score.v1.json) and, for every answering score (champion or canary; challenger
shadow scores are skipped) at or above ALERT_THRESHOLD, sends an `Alert` to the alerts topic,
keyed by the entity. Settings (environment): KAFKA_BOOTSTRAP_SERVERS, SCORES_TOPIC (scores),
ALERTS_TOPIC (score-alerts), ALERT_THRESHOLD (0.8), FAUST_APP_ID (streamscore-alerts),
FAUST_DATADIR (./faust-data), FAUST_WEB_PORT (6066).

The app runs with processing_guarantee="exactly_once": Faust then reads with
isolation.level=read_committed (it never sees scores of a transaction the engine aborted) and
produces the alerts in transactions with its consumed offsets, so each answering score above the
threshold yields exactly one alert.
"""

from __future__ import annotations

import os
from typing import Optional

import faust


class Model(faust.Record, serializer="json"):
    name: str
    version: int


class Score(faust.Record, serializer="json"):
    """The engine's score record, schema version 1 (unknown fields are ignored)."""

    schema_version: int
    event_id: str
    entity: str
    score: float
    model: Model
    feature_spec: str
    event_ts: int
    scored_ts: int
    variant: str
    guarantee: str
    features: Optional[dict] = None


class Alert(faust.Record, serializer="json"):
    event_id: str
    entity: str
    score: float
    threshold: float
    model: str
    event_ts: int


THRESHOLD = float(os.environ.get("ALERT_THRESHOLD", "0.8"))

app = faust.App(
    os.environ.get("FAUST_APP_ID", "streamscore-alerts"),
    broker="kafka://" + os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    datadir=os.environ.get("FAUST_DATADIR", "faust-data"),
    processing_guarantee="exactly_once",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    web_port=int(os.environ.get("FAUST_WEB_PORT", "6066")),  # the worker binds it even when disabled
    topic_disable_leader=True,
)
scores_topic = app.topic(os.environ.get("SCORES_TOPIC", "scores"), value_type=Score, key_type=bytes)
alerts_topic = app.topic(os.environ.get("ALERTS_TOPIC", "score-alerts"), value_type=Alert, key_type=bytes)


def is_alert(score: Score, threshold: float = THRESHOLD) -> bool:
    """Answering scores (not shadow ones) at or above the threshold."""
    return score.schema_version == 1 and score.variant in ("champion", "canary") and score.score >= threshold


@app.agent(scores_topic)
async def alert_on_high_scores(scores: faust.Stream[Score]) -> None:
    async for score in scores:
        if is_alert(score):
            await alerts_topic.send(key=score.entity.encode(), value=Alert(
                event_id=score.event_id, entity=score.entity, score=score.score, threshold=THRESHOLD,
                model=f"{score.model.name} v{score.model.version}", event_ts=score.event_ts))


if __name__ == "__main__":
    app.main()
