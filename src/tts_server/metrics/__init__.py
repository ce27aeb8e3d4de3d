"""Prometheus metrics, owned by the parent process (workers report durations inside their results)."""

from tts_server.metrics.registry import ServerMetrics

__all__ = ["ServerMetrics"]
