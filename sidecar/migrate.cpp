#include "migrate.h"

#include <set>

#include <spdlog/spdlog.h>

namespace outboxd {
namespace {

// Each statement runs only when its object is missing: an up-to-date schema needs no privilege
// beyond reading the ledger (the outbox_relay role may run `outboxd migrate`).
constexpr const char* kCreateSchema = "CREATE SCHEMA outbox";
constexpr const char* kCreateLedgerTable =
    "CREATE TABLE outbox.schema_migrations ("
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

// Creates the schema `outbox` and the ledger table where they are missing.
Status CreateLedger(pg::Connection& conn) {
  auto missing = conn.Query(
      "SELECT to_regnamespace('outbox') IS NULL, to_regclass('outbox.schema_migrations') IS NULL");
  if (!missing.ok()) return missing.status();
  if (missing->Get(0, 0) == "t") {
    if (Status s = conn.Exec(kCreateSchema); !s.ok()) return s;
  }
  if (missing->Get(0, 1) == "t") return conn.Exec(kCreateLedgerTable);
  return Status::Ok();
}

// The step that failed, named, with PostgreSQL's message; the transaction is rolled back.
Status Failed(pg::Connection& conn, const std::string& step, const Status& s) {
  (void)conn.Exec("ROLLBACK");
  return Status::Invalid(step + " failed: " + s.message());
}

}  // namespace

Result<int> ApplyMigrations(pg::Connection& conn) {
  // Read first, without a transaction or a lock: on a current schema nothing is written.
  Result<std::set<int>> done = AppliedVersions(conn);
  if (!done.ok()) {
    return Status::Invalid("reading the applied migrations (outbox.schema_migrations) failed: " +
                           done.status().message());
  }
  int applied = 0;
  for (const Migration& m : EmbeddedMigrations()) {
    if (done->count(m.version)) continue;
    const std::string name(m.name);
    if (Status s = conn.Exec("BEGIN"); !s.ok()) return Failed(conn, "BEGIN before " + name, s);
    if (Status s = conn.Exec(kMigrationLock); !s.ok()) {
      return Failed(conn, "taking the migration lock before " + name, s);
    }
    if (Status s = CreateLedger(conn); !s.ok()) {
      return Failed(conn, "creating the ledger outbox.schema_migrations", s);
    }
    // Another `outboxd migrate` may have applied it while this one waited for the lock.
    Result<std::set<int>> now = AppliedVersions(conn);
    if (!now.ok()) return Failed(conn, "reading the applied migrations", now.status());
    if (now->count(m.version)) {
      if (Status c = conn.Exec("COMMIT"); !c.ok()) return Failed(conn, "COMMIT", c);
      continue;
    }
    if (Status s = conn.Exec(m.sql); !s.ok()) return Failed(conn, "migration " + name, s);
    pg::Params p;
    p.Add(int64_t{m.version}).Add(name);
    Status s = conn.Query("INSERT INTO outbox.schema_migrations (version, name) VALUES ($1, $2)", p)
                   .status();
    if (!s.ok()) return Failed(conn, "recording migration " + name, s);
    if (Status c = conn.Exec("COMMIT"); !c.ok()) {
      return Failed(conn, "committing migration " + name, c);
    }
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

Status CheckIdSequence(pg::Connection& conn) {
  auto r = conn.Query(
      "SELECT s.seqcache FROM pg_catalog.pg_sequence s "
      "WHERE s.seqrelid = to_regclass('outbox.messages_id_seq')");
  if (!r.ok()) return r.status();
  if (r->rows() == 0) {
    return Status::Invalid(
        "the id sequence outbox.messages_id_seq is missing: run `outboxd migrate --config ...`");
  }
  const int64_t cache = r->GetInt(0, 0);
  if (cache == 1) return Status::Ok();
  return Status::Invalid(
      "the id sequence outbox.messages_id_seq has CACHE " + std::to_string(cache) +
      ": with a cache, each session takes ids from its own block, so a later transaction can "
      "commit a lower id than one already delivered and the relay's scan would skip it. Run "
      "ALTER SEQUENCE outbox.messages_id_seq CACHE 1");
}

}  // namespace outboxd
