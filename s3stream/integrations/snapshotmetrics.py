"""The metrics of a ``snapshot serve`` process: the state of its
:class:`~s3stream.integrations.snapshot.Follower`,
read when ``/metrics`` is scraped (nothing is updated on the follower's path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from s3stream.integrations.snapshot import Follower

_LABELS = ("bucket", "key")


class FollowerCollector:
    """``s3stream_snapshot_*``: keys served, when the served version was loaded and when S3 was last
    checked, whether the last check failed, checks and downloads."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def collect(self) -> Iterator[Metric]:
        f = self.follower
        where = [f.bucket, f.key]
        yield _gauge("s3stream_snapshot_keys", "Keys in the version served (0 before the first load).",
                     where, len(f.data))
        yield _gauge("s3stream_snapshot_loaded_timestamp_seconds", "Unix time the version served was loaded.",
                     where, f.loaded_at.timestamp() if f.loaded_at else 0.0)
        yield _gauge("s3stream_snapshot_last_check_timestamp_seconds",
                     "Unix time S3 was last checked for a new version.", where,
                     f.last_checked.timestamp() if f.last_checked else 0.0)
        yield _gauge("s3stream_snapshot_last_check_failed",
                     "1 when the last check failed or the newest version was refused (see /status).",
                     where, 0.0 if f.last_error is None else 1.0)
        counters = (("s3stream_snapshot_checks", "Checks for a new version completed.", f.checks),
                    ("s3stream_snapshot_downloads", "Versions downloaded.", f.downloads))
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=_LABELS)
            counter.add_metric(where, value)
            yield counter


def _gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=_LABELS)
    gauge.add_metric(labels, value)
    return gauge


def register(follower: Follower) -> FollowerCollector:
    """Expose ``follower`` in the default registry until :func:`unregister`."""
    collector = FollowerCollector(follower)
    REGISTRY.register(collector)
    return collector


def unregister(collector: FollowerCollector) -> None:
    REGISTRY.unregister(collector)
