"""Sources that put events into Kafka: the SUMO twin, data replays and the load generator."""
