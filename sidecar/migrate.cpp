#include "migrate.h"

#include <set>

#include <spdlog/spdlog.h>

namespace outboxd {
namespace {

constexpr const char* kCreateLedger =
    "CREATE SCHEMA IF NOT EXISTS outbox;"
    "CREATE TABLE IF NOT EXISTS outbox.schema_migrations ("
    "  version integer PRIMARY KEY, name text NOT NULL,"
    "  applied_at timestamptz NOT NULL DEFAULT now())";
// An arbitrary constant: serializes concurrent `outboxd migrate` runs.
constexpr const char* kMigrationLock = "SELECT pg_advisory_xact_lock(7299548542091251001)";

Result<std::set<int>> AppliedVersions(pg::Connection& conn) {
  auto exists = conn.Query("SELECT to_regclass('outbox.schema_migrations') IS NOT NULL");
  if (!exists.ok()) return exists.status();
  std::set<int> versions;
  if (exists->Get(0, 0) != "t") return versions;
  auto rows = conn.Query("SELECT version FROM outbox.schema_migrations");
  if (!rows.ok()) return rows.status();
  for (int i = 0; i < rows->rows(); ++i) versions.insert(static_cast<int>(rows->GetInt(i, 0)));
  return versions;
}

}  // namespace

Result<int> ApplyMigrations(pg::Connection& conn) {
  int applied = 0;
  for (const Migration& m : EmbeddedMigrations()) {
    if (Status s = conn.Exec("BEGIN"); !s.ok()) return s;
    Status s = conn.Exec(kMigrationLock);
    if (s.ok()) s = conn.Exec(kCreateLedger);
    Result<std::set<int>> done = s.ok() ? AppliedVersions(conn) : Result<std::set<int>>(s);
    if (done.ok() && done->count(m.version)) {
      s = conn.Exec("COMMIT");
      if (!s.ok()) return s;
      continue;
    }
    if (!done.ok()) s = done.status();
    if (s.ok()) s = conn.Exec(m.sql);
    if (s.ok()) {
      pg::Params p;
      p.Add(int64_t{m.version}).Add(std::string(m.name));
      s = conn.Query("INSERT INTO outbox.schema_migrations (version, name) VALUES ($1, $2)", p)
              .status();
    }
    if (!s.ok()) {
      (void)conn.Exec("ROLLBACK");
      return Status::Invalid("migration " + std::string(m.name) + " failed: " + s.message());
    }
    if (Status c = conn.Exec("COMMIT"); !c.ok()) return c;
    spdlog::info("applied migration {}", m.name);
    ++applied;
  }
  return applied;
}

Status CheckSchemaCurrent(pg::Connection& conn) {
  auto done = AppliedVersions(conn);
  if (!done.ok()) return done.status();
  std::string missing;
  for (const Migration& m : EmbeddedMigrations()) {
    if (!done->count(m.version)) missing += (missing.empty() ? "" : ", ") + std::string(m.name);
  }
  if (missing.empty()) return Status::Ok();
  return Status::Invalid("the outbox schema is not current (missing " + missing +
                         "): run `outboxd migrate --config ...` first");
}

}  // namespace outboxd
