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

// The settings the checkpoint topic is created with. Compacted; and its segments roll at 1 MiB
// (about 10,000 checkpoints) or after an hour, with compaction due at 10% of records superseded,
// so that the topic keeps about one record per outbox instead of an active segment of up to
// 1 GiB / 7 days that compaction never touches. `outboxd doctor` judges an existing topic by them.
inline constexpr const char* kCheckpointCleanupPolicy = "compact";
inline constexpr long long kCheckpointSegmentBytes = 1LL << 20;
inline constexpr long long kCheckpointSegmentMs = 3'600'000;
inline constexpr const char* kCheckpointDirtyRatio = "0.1";

// Creates the topic (one partition, the settings above, the broker's default replication)
// unless it exists; an existing topic is left as it is. Unavailable when Kafka does not answer in
// `timeout`.
Status EnsureCheckpointTopic(const KafkaConfig& kafka, const std::string& topic, Millis timeout);

// The last checkpoint of outbox incarnation `outbox` stored under `key`, read with
// isolation.level=read_committed from each partition of `topic`, backwards from its end in
// growing windows until a window holds a record of `key` (the end counts only once no
// transaction is open there): its cost follows how far back the outbox's last transaction lies,
// not the topic's history. nullopt if there is none (a tombstone counts as none). Records of
// another incarnation (a re-created database, another outbox sharing the key) are skipped. Call it
// after InitTransactions: the outbox's own last transaction is then committed or aborted, never
// open. Unavailable on a timeout; Invalid for a record under `key` that is not a checkpoint.
Result<std::optional<Checkpoint>> ReadLastCheckpoint(const KafkaConfig& kafka,
                                                     const std::string& topic,
                                                     const std::string& key,
                                                     const std::string& outbox, Millis timeout);

// The relay's reader in exactly-once mode: ensures the topic, then reads the last checkpoint under
// the outbox's transactional.id, each step within 2/5 of leadership.session_timeout (no statement
// reaches PostgreSQL meanwhile).
CheckpointReader KafkaCheckpointReader(const Config& config);

}  // namespace outboxd
