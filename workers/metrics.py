"""Counters the workers keep in Redis for the API's /metrics; the API reads the same keys (api.broker).

A counter that cannot be written is logged and skipped: numbers for a dashboard never fail a job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

SCORE_CACHE_HITS_KEY = "soce:metrics:score_cache_hits"
SCORE_CACHE_MISSES_KEY = "soce:metrics:score_cache_misses"
REDIS_TIMEOUT = 2.0  # seconds: a counter is not worth waiting for

log = logging.getLogger(__name__)
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> Any:
    import redis

    with _clients_lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
            )
        return _clients[url]


def count_score_cache(broker_url: str, *, hits: int, misses: int) -> None:
    """Add candidate x task lookups to the score cache counters: `hits` found, `misses` evaluated."""
    if hits <= 0 and misses <= 0:
        return
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        log.debug("score cache counters: broker %s is not Redis; not counted", broker_url.split("@")[-1])
        return
    try:
        pipe = _client(broker_url).pipeline()
        if hits > 0:
            pipe.incrby(SCORE_CACHE_HITS_KEY, hits)
        if misses > 0:
            pipe.incrby(SCORE_CACHE_MISSES_KEY, misses)
        pipe.execute()
    except Exception as e:
        log.warning(
            "score cache counters at %s not updated (%d hits, %d misses): %s: %s",
            broker_url.split("@")[-1],
            hits,
            misses,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
