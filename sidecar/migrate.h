// Schema migrations: schema/NNN_name.sql, compiled into the binary, applied in order, once each.
#pragma once

#include <string>
#include <vector>

#include "pg/connection.h"
#include "status.h"

namespace outboxd {

struct Migration {
  int version;
  const char* name;
  const char* sql;
};

// All migrations built into this binary, in version order.
const std::vector<Migration>& EmbeddedMigrations();

// Applies the migrations not yet recorded in outbox.schema_migrations, each in its own transaction,
// under an advisory lock so that concurrent runs apply each one once. Returns how many it applied.
Result<int> ApplyMigrations(pg::Connection& conn);

// Ok when every embedded migration is recorded; otherwise says which are missing.
Status CheckSchemaCurrent(pg::Connection& conn);

// Ok when outbox.messages_id_seq hands out ids one at a time (CACHE 1), which the relay's scan
// window depends on (docs/design.md, "scan"); otherwise says how to fix it.
Status CheckIdSequence(pg::Connection& conn);

}  // namespace outboxd
