// Admin commands: `outboxd dead-letters list|requeue|drop`, `outboxd replay`, `outboxd status
// --json`. Each runs on a short-lived connection of the calling thread and is safe while a
// leader runs: a command that puts rows back below the relay's fetch position (requeue, replay)
// does it in one transaction that also sets outbox.relay_state.rescan_from and notifies; the
// relay reads that request in the same snapshot as the rows, waits for what it has in flight and
// rescans from there (docs/design.md, "The admin room"). drop and list touch only
// outbox.dead_letters, which the relay only inserts into.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "config.h"
#include "pg/connection.h"
#include "status.h"

namespace outboxd {

// Output: readable text, or one JSON document (`--json`).
struct CommandOutput {
  std::ostream& out;
  bool json = false;
};

// Dead letters in id order, at most `limit`.
Status ListDeadLetters(pg::Connection& conn, int limit, CommandOutput out);
// Moves dead letters back into outbox.messages with their original id (so outbox-id) and
// created_at; `ids` empty with `all`: every one. All or nothing: an id that is not a dead letter
// is an error (Invalid) and nothing moves.
Status RequeueDeadLetters(pg::Connection& conn, const std::vector<int64_t>& ids, bool all,
                          CommandOutput out);
// Deletes dead letters; all or nothing, as requeue.
Status DropDeadLetters(pg::Connection& conn, const std::vector<int64_t>& ids, CommandOutput out);

// Which sent rows `replay` sends again (on_sent = "retain" keeps them): by id range, or those
// created at or after `since` (a timestamp PostgreSQL reads, or a duration such as "15m": that
// long ago).
struct ReplayRange {
  std::optional<int64_t> from_id;
  std::optional<int64_t> to_id;
  std::optional<std::string> since;
};
Status Replay(pg::Connection& conn, const Config& config, const ReplayRange& range,
              CommandOutput out);

// `outboxd status --json`: the backlog, dead letters, leader and half messages as one object.
Status WriteStatusJson(pg::Connection& conn, const Config& config, std::ostream& out);

}  // namespace outboxd
