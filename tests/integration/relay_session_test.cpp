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

}  // namespace
}  // namespace outboxd::testing
