"""What a long-running service needs around the pipeline: :mod:`.logs` (the library's loggers),
:mod:`.metrics` (Prometheus and the health server), :mod:`.tracing` (OpenTelemetry), :mod:`.deadletter`
(messages that could not be handled) and :mod:`.progress` (the progress callback of long operations).
"""
