"""The embedded stack: Kafka and PostgreSQL as native processes under one state directory."""
