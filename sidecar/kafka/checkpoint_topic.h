// The exactly-once mode's checkpoint topic (relay.checkpoint_topic): compacted, one record per
// committed transaction, keyed by the outbox's transactional.id (sidecar/checkpoint.h has the
// value). Each call builds its own short-lived librdkafka handle with the user's
// kafka.properties (security settings apply), so nothing here is shared; called by the relay
// thread at the start of a leadership term.
#pragma once

#include <optional>
#include <string>

#include "checkpoint.h"
#include "config.h"
#include "duration.h"
#include "status.h"

namespace outboxd {

// Creates the topic (one partition, cleanup.policy=compact, the broker's default replication)
// unless it exists. Unavailable when Kafka does not answer in `timeout`.
Status EnsureCheckpointTopic(const KafkaConfig& kafka, const std::string& topic, Millis timeout);

// The last checkpoint of outbox incarnation `outbox` stored under `key`, read with
// isolation.level=read_committed from every partition of `topic` up to its end (the end counts
// only once no transaction is open there); nullopt if there is none. Records of another
// incarnation (a re-created database, another outbox sharing the key) are skipped. Call it after
// InitTransactions: the outbox's own last transaction is then committed or aborted, never open.
// Unavailable on a timeout; Invalid for a record under `key` that is not a checkpoint.
Result<std::optional<Checkpoint>> ReadLastCheckpoint(const KafkaConfig& kafka,
                                                     const std::string& topic,
                                                     const std::string& key,
                                                     const std::string& outbox, Millis timeout);

// The relay's reader in exactly-once mode: ensures the topic, then reads the last checkpoint under
// the outbox's transactional.id, each step within 2/5 of leadership.session_timeout (no statement
// reaches PostgreSQL meanwhile).
CheckpointReader KafkaCheckpointReader(const Config& config);

}  // namespace outboxd
