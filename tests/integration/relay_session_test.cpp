// The relay's PostgreSQL session never JIT-compiles its statements. PostgreSQL compiles a
// statement whose plan's estimated cost passes jit_above_cost, at every execution. With
// enable_seqscan = off (commit 9186034) the fetch's plan, which must scan outbox.relay_state,
// cost 1e10: each fetch was compiled, inlined and optimized by LLVM (1.2 s of CPU for a 0.4 ms
// statement), the relay delivered one batch a second and
// RelayIntegration.PostgresCrashMidStreamLosesNothing saw 8,953 of 20,003 rows not arrive in time.
// (Without such settings the fetch's generic plan costs about 3,600 on 1,000,000 rows, far below
// jit_above_cost's 100,000; the hardening is for whatever makes a plan look expensive.)
//
// The witness is PostgreSQL's own: with jit_dump_bitcode = on, every compilation writes
// <pid>.<n>.bc into the data directory.
//
// Also here: the removal statement, which names acknowledged ids as runs (ToRuns), removes (or
// marks) exactly the named rows in both on_sent modes.
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "config.h"
#include "outbox_store.h"

namespace outboxd::testing {
namespace {

// JIT compilations so far by the backend `pid`, as files in the data directory.
int Compilations(const TestDatabase& db, int64_t pid) {
  return std::stoi(db.Scalar("SELECT count(*) FROM pg_ls_dir('.') AS f WHERE f LIKE '" +
                             std::to_string(pid) + ".%.bc'"));
}

// Removes the bitcode files of the sessions it was told about, when the test ends (also early).
class BitcodeFiles {
 public:
  explicit BitcodeFiles(const TestDatabase& db) : db_(db) {}
  ~BitcodeFiles() {
    const std::filesystem::path dir = db_.Scalar("SHOW data_directory");
    for (int64_t pid : pids_) {
      const std::string files =
          db_.Scalar("SELECT string_agg(f, ' ') FROM pg_ls_dir('.') AS f WHERE f LIKE '" +
                     std::to_string(pid) + ".%.bc'");
      for (size_t start = 0; start < files.size();) {
        size_t end = files.find(' ', start);
        if (end == std::string::npos) end = files.size();
        std::error_code ignored;  // best effort: another user's data directory may be read-only
        std::filesystem::remove(dir / files.substr(start, end - start), ignored);
        start = end + 1;
      }
    }
  }
  void Add(int64_t pid) { pids_.push_back(pid); }

 private:
  const TestDatabase& db_;
  std::vector<int64_t> pids_;
};

TEST(RelaySession, StatementsAreNotJitCompiledWhenTheirPlanLooksExpensive) {
  Services services;
  OUTBOXD_REQUIRE_SERVICES(services);
  TestDatabase db(services);
  // Every new session of this database: the plans of 9186034 (a disabled sequential scan costs
  // 1e10) and a bitcode file per JIT compilation.
  db.Exec("ALTER DATABASE " + db.name() + " SET enable_seqscan = off; ALTER DATABASE " + db.name() +
          " SET enable_bitmapscan = off; ALTER DATABASE " + db.name() +
          " SET jit_dump_bitcode = on");

  BitcodeFiles bitcode(db);

  // Control: a session of this database with JIT on (PostgreSQL's default) compiles such a
  // statement (JIT is available and the settings reach new sessions), so the check below can fail.
  pg::Connection control = db.Connect();
  ASSERT_TRUE(control.Exec("SET jit = on").ok());
  auto pid = control.Query("SELECT pg_backend_pid()");
  ASSERT_TRUE(pid.ok()) << pid.status().message();
  const int64_t control_pid = pid->GetInt(0, 0);
  bitcode.Add(control_pid);
  ASSERT_TRUE(control.Query("SELECT rescan_from FROM outbox.relay_state").ok());
  const int control_compilations = Compilations(db, control_pid);

  Config config;
  config.postgres.conninfo = db.conninfo();
  config.relay.batch_size = 50;
  // (The writer's session without JIT: under these settings each publish() would be compiled.)
  db.Exec(
      "SET jit = off; SELECT count(outbox.publish('t', 'k', repeat('x', 200))) "
      "FROM generate_series(1, 200)");
  PgOutboxStore store(config);
  ASSERT_TRUE(store.Lead().ok());
  const int64_t relay_pid = store.Session().pid;
  bitcode.Add(relay_pid);
  size_t got = 0;
  std::vector<OutboxRow> rows;
  int fetches = 0;
  do {
    Status fetched = store.FetchBatch(&rows);
    ASSERT_TRUE(fetched.ok()) << fetched.message();
    ++fetches;
    got += rows.size();
    std::vector<int64_t> ids;
    for (const auto& r : rows) ids.push_back(r.id);
    Status marked = store.MarkSent(ids);
    ASSERT_TRUE(marked.ok()) << marked.message();
  } while (!rows.empty());
  ASSERT_TRUE(store.SetSleeping(true).ok());
  ASSERT_TRUE(store.SetSleeping(false).ok());
  const int relay_compilations = Compilations(db, relay_pid);
  store.Disconnect();

  EXPECT_EQ(got, 200u) << "every row is fetched under any plan";
  ASSERT_GT(control_compilations, 0)
      << "PostgreSQL did not JIT-compile a statement costing 1e10: is JIT (llvmjit) installed?";
  EXPECT_EQ(relay_compilations, 0) << "the relay's session JIT-compiled " << relay_compilations
                                   << " modules in " << fetches << " fetches";
}

// Removes the named ids (unsorted, repeated, in runs and alone) from 30 rows and returns the ids
// whose row is gone (delete) or marked sent (retain), in order.
std::string RemovedIds(Services& services, OnSent on_sent) {
  TestDatabase db(services);
  db.Exec("SELECT count(outbox.publish('t', 'k', 'x')) FROM generate_series(1, 30)");
  const int64_t first = std::stoll(db.Scalar("SELECT min(id) FROM outbox.messages"));
  Config config;
  config.postgres.conninfo = db.conninfo();
  config.relay.on_sent = on_sent;
  PgOutboxStore store(config);
  Status led = store.Lead();
  EXPECT_TRUE(led.ok()) << led.message();
  std::vector<int64_t> ids;
  for (int64_t offset : {12, 3, 4, 5, 0, 29, 4, 20, 21, 7, 28}) ids.push_back(first + offset);
  Status marked = store.MarkSent(ids);
  EXPECT_TRUE(marked.ok()) << marked.message();
  store.Disconnect();
  const std::string gone =
      on_sent == OnSent::kDelete
          ? "SELECT g FROM generate_series(0, 29) g WHERE NOT EXISTS (SELECT FROM "
            "outbox.messages WHERE id = " +
                std::to_string(first) + " + g)"
          : "SELECT id - " + std::to_string(first) +
                " FROM outbox.messages WHERE sent_at IS NOT NULL";
  return db.Scalar("SELECT string_agg(g::text, ',' ORDER BY g) FROM (" + gone + ") AS s(g)");
}

TEST(RelaySession, RemovalTakesExactlyTheNamedRows) {
  Services services;
  OUTBOXD_REQUIRE_SERVICES(services);
  EXPECT_EQ(RemovedIds(services, OnSent::kDelete), "0,3,4,5,7,12,20,21,28,29");
}

TEST(RelaySession, RetainModeMarksExactlyTheNamedRows) {
  Services services;
  OUTBOXD_REQUIRE_SERVICES(services);
  EXPECT_EQ(RemovedIds(services, OnSent::kRetain), "0,3,4,5,7,12,20,21,28,29");
}

}  // namespace
}  // namespace outboxd::testing
