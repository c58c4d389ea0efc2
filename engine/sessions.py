"""Closed-session reporting in the engine: score closed sessions and turn them into records.

The sessions themselves are found by `features` (a batch's `BatchResult.closed`, the sweep's
`features.sessions.close_sessions`); this module only scores their rows with the serving model
(the champion, or the canary for the entities it answers; never the shadow challenger) and builds
the records (`engine.records.session_closed_records`). The runner produces them inside the
batch's Kafka transaction, so each closed session is reported exactly once (docs/features.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.records import session_closed_records
from engine.serving import ModelRouter
from features.sessions import ClosedSession
from features.spec import FeatureSpec


def closed_session_messages(
    closed: Sequence[ClosedSession], router: ModelRouter, spec: FeatureSpec, guarantee: str, closed_ts: int
) -> list[dict[str, Any]]:
    """`produce_batch` messages for `closed`, each scored by the model that answers its entity."""
    if not closed:
        return []
    rows = np.stack([s.vector() for s in closed])
    scores: list[float] = [0.0] * len(closed)
    models: list[dict[str, Any]] = [{}] * len(closed)
    variants: list[str] = [""] * len(closed)
    for vs in router.score([s.entity for s in closed], rows):
        if vs.variant == "challenger":  # shadow scores are not answers
            continue
        index = range(len(closed)) if vs.index is None else vs.index.tolist()
        for i, score in zip(index, vs.scores.tolist()):
            scores[i], models[i], variants[i] = score, vs.model, vs.variant
    return session_closed_records(closed, scores, models, variants, spec.hash, spec.names, guarantee, closed_ts)
