// Checkpoint: what one Kafka transaction of the exactly-once mode carried, as outbox id ranges.
// Its text is the value of the transaction's record on the checkpoint topic (key: the outbox's
// transactional.id): "outboxd-checkpoint v1 outbox=<incarnation> sent=1-5,9 dead=7 put_back=3".
// `sent` are rows delivered to their topics, `dead` rows whose copy went to the dead-letter topic,
// `put_back` the put-back generation of the fetch (OutboxStore::PutBackGeneration; the field is
// left out when 0). A new leader reads the last committed one (read_committed) and removes those
// rows without sending them again, unless an admin command put them back later (docs/design.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "status.h"

namespace outboxd {

struct Checkpoint {
  std::string outbox;         // the outbox's incarnation (OutboxStore::Incarnation), no spaces
  std::vector<int64_t> sent;  // ascending, no repeats
  std::vector<int64_t> dead;  // ascending, no repeats
  int64_t put_back = 0;       // rows put back at a higher generation are not the ones carried

  bool empty() const { return sent.empty() && dead.empty(); }
};

// Sorts, removes repeats, and writes the ranges.
std::string EncodeCheckpoint(Checkpoint checkpoint);
// Invalid for a text that EncodeCheckpoint did not write.
Result<Checkpoint> ParseCheckpoint(const std::string& text);

// Reads the outbox's last committed checkpoint (nullopt: none yet); kafka/checkpoint_topic.h.
// Only a checkpoint of the given outbox incarnation counts.
using CheckpointReader =
    std::function<Result<std::optional<Checkpoint>>(const std::string& outbox)>;

// "1-5,9" for {1,2,3,4,5,9}; `ids` ascending.
std::string IdRanges(const std::vector<int64_t>& ids);

}  // namespace outboxd
