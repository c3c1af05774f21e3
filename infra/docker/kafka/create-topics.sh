#!/usr/bin/env bash
# kafka-init: create the CityOS topics named on the command line (base names, as in
# cityos/topics.py), each with explicit partitions and retention. It mirrors
# cityos.stack.kafka.ensure_topics of the embedded stack: a topic that exists is left as it is
# (a partition count only grows, and a changed count would move keys between partitions).
#
# Environment (names of cityos.settings.Settings fields):
#   CITYOS_KAFKA_BOOTSTRAP         host:port of the broker
#   CITYOS_KAFKA_PARTITIONS        partitions of each new topic
#   CITYOS_KAFKA_RETENTION_HOURS   retention of each new topic
#   CITYOS_TOPIC_PREFIX            optional prefix of every topic name
set -euo pipefail

bootstrap=${CITYOS_KAFKA_BOOTSTRAP:?CITYOS_KAFKA_BOOTSTRAP is not set}
partitions=${CITYOS_KAFKA_PARTITIONS:?CITYOS_KAFKA_PARTITIONS is not set}
hours=${CITYOS_KAFKA_RETENTION_HOURS:?CITYOS_KAFKA_RETENTION_HOURS is not set}
prefix=${CITYOS_TOPIC_PREFIX:-}
topics_cli=/opt/kafka/bin/kafka-topics.sh

if [ "$#" -eq 0 ]; then
  echo "create-topics: no topic names given" >&2
  exit 2
fi
retention_ms=$((hours * 3600 * 1000))

for base in "$@"; do
  topic="${prefix}${base}"
  extra=()
  case "$topic" in  # cityos.topics.Topics.configs: dead letters carry the original bytes
    *.dlq) extra=(--config "max.message.bytes=$((8 << 20))") ;;
  esac
  "$topics_cli" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1 \
    --config "retention.ms=${retention_ms}" "${extra[@]}"
  echo "create-topics: ${topic} ready"
done
"$topics_cli" --bootstrap-server "$bootstrap" --describe
