"""The Spark Structured Streaming job: Kafka source topics -> DLQ, lake and serving tables.

One streaming query per source topic; each micro-batch is handled by pure DataFrame transforms
(:mod:`.validate`, :mod:`.windows`) and small sinks (:mod:`.sinks`), wired in :mod:`.aggregate`.
See streaming/README.md for the design and the late-data policy.
"""
