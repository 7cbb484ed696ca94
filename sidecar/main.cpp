// outboxd: flags, signals and exit codes. Everything else lives in the library.
//   exit 0: success · exit 2: bad configuration or usage · exit 1: runtime failure
#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "backoff.h"
#include "checkback.h"
#include "checker.h"
#include "config.h"
#include "kafka/producer.h"
#include "log.h"
#include "migrate.h"
#include "outbox_store.h"
#include "pg/connection.h"
#include "prepared_store.h"
#include "relay.h"
#include "secrets.h"
#include "status_report.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void InstallSignalHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

outboxd::Result<outboxd::Config> Load(const std::string& path) {
  auto config = outboxd::LoadConfig(path);
  if (!config.ok()) std::cerr << "outboxd: " << config.status().message() << "\n";
  return config;
}

int Run(const outboxd::Config& config) {
  outboxd::InitLogging(config.log.level);
  outboxd::InstallLogRedaction();
  spdlog::info("outboxd {} starting: config {}, kafka {}", OUTBOXD_VERSION, config.path,
               config.kafka.bootstrap_servers);
  // What librdkafka refuses in the properties is a configuration error (checked without
  // connecting).
  if (outboxd::Status s = outboxd::CheckProducerProperties(config.kafka); !s.ok()) {
    spdlog::error("{}: {}", config.path, s.message());
    return kExitConfig;
  }
  for (const std::string& w : outboxd::ProducerPropertyWarnings(config.kafka)) {
    spdlog::warn("{}: {}", config.path, w);
  }
  InstallSignalHandlers();
  outboxd::PgOutboxStore store(config);
  outboxd::Relay relay(config, store,
                       [&config] { return outboxd::KafkaPublisher::Create(config.kafka); });
  // Check-back: its own thread and connection, active while the relay leads.
  outboxd::PgPreparedStore prepared(config.postgres.conninfo,
                                    outboxd::SessionTcpSettings(config.leadership));
  std::optional<outboxd::CheckBack> checkback;
  if (config.checkback.enabled) {
    checkback.emplace(config.checkback, prepared,
                      outboxd::MakeChecker(config.checkback, config.postgres.conninfo),
                      [&relay] { return relay.leader_session(); });
    checkback->Start(g_stop);
  }
  outboxd::Status s = relay.Run(g_stop);
  if (checkback) checkback->Stop();
  if (!s.ok()) {
    spdlog::error("{}", s.message());
    return s.code() == outboxd::Status::Code::kInvalid ? kExitConfig : kExitRuntime;
  }
  return kExitOk;
}

int PrintStatus(const outboxd::Config& config) {
  auto conn = outboxd::pg::Connection::Open(config.postgres.conninfo, "outboxd status",
                                            outboxd::SessionTcpSettings(config.leadership));
  if (!conn.ok()) {
    std::cerr << "outboxd: " << outboxd::Redact(conn.status().message()) << "\n";
    return kExitRuntime;
  }
  outboxd::Status s = outboxd::WriteStatusReport(*conn, config, std::cout);
  if (!s.ok()) {
    std::cerr << "outboxd: " << outboxd::Redact(s.message()) << "\n";
    return kExitRuntime;
  }
  return kExitOk;
}

// Connects for `migrate`; with `wait` > 0, retries (back-off from config [backoff]) until
// PostgreSQL answers or `wait` has passed, so that a unit started with the database may run it.
outboxd::Result<outboxd::pg::Connection> ConnectForMigrate(const outboxd::Config& config,
                                                           outboxd::Millis wait) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + wait;
  outboxd::Backoff backoff(config.backoff.initial, config.backoff.max);
  for (;;) {
    auto conn = outboxd::pg::Connection::Open(config.postgres.conninfo, "outboxd migrate",
                                              outboxd::SessionTcpSettings(config.leadership));
    if (conn.ok() || wait.count() <= 0) return conn;
    const auto left = std::chrono::duration_cast<outboxd::Millis>(deadline - Clock::now());
    if (left.count() <= 0) {
      return outboxd::Status::Unavailable(conn.status().message() + " (waited " +
                                          outboxd::FormatDuration(wait) + " for it to answer)");
    }
    const outboxd::Millis delay = std::min(backoff.Next(), left);
    if (backoff.attempts() == 1) {
      spdlog::warn("{}; waiting up to {} for it to answer", conn.status().message(),
                   outboxd::FormatDuration(wait));
    }
    std::this_thread::sleep_for(delay);
  }
}

int Migrate(const outboxd::Config& config, outboxd::Millis wait) {
  outboxd::InitLogging(config.log.level);
  outboxd::InstallLogRedaction();
  auto conn = ConnectForMigrate(config, wait);
  if (!conn.ok()) {
    spdlog::error("{}", conn.status().message());
    return kExitRuntime;
  }
  auto applied = outboxd::ApplyMigrations(*conn);
  if (!applied.ok()) {
    spdlog::error("{}", applied.status().message());
    return kExitRuntime;
  }
  std::cout << "schema current: " << *applied << " migration(s) applied, "
            << outboxd::EmbeddedMigrations().size() << " known\n";
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"outboxd: a transactional outbox relay from PostgreSQL to Kafka"};
  std::string config_path = "/etc/outboxd/outboxd.toml";
  bool show_version = false;
  app.add_option("-c,--config", config_path, "configuration file")
      ->envname("OUTBOXD_CONFIG")
      ->capture_default_str();
  app.require_subcommand(0, 1);
  auto* run = app.add_subcommand("run", "deliver outbox messages to Kafka (the default)");
  auto* migrate = app.add_subcommand("migrate", "apply pending schema migrations, then exit");
  auto* check = app.add_subcommand("check-config", "validate the configuration without connecting");
  auto* status = app.add_subcommand(
      "status", "show the backlog, dead letters and prepared (half) messages, then exit");
  auto* version = app.add_subcommand("version", "print the version");
  app.add_flag("-V,--version", show_version, "print the version");
  std::string wait_text = "0s";
  migrate
      ->add_flag("--wait{60s}", wait_text,
                 "retry until PostgreSQL answers, for at most this long (--wait: 60s)")
      ->capture_default_str();
  for (auto* sub : {run, migrate, check, status}) {
    sub->add_option("-c,--config", config_path, "configuration file")->envname("OUTBOXD_CONFIG");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitConfig;
  }

  if (*version || show_version) {
    std::cout << "outboxd " << OUTBOXD_VERSION << "\n";
    return kExitOk;
  }
  auto config = Load(config_path);
  if (!config.ok()) return kExitConfig;
  outboxd::RegisterSecrets(config->secrets);
  if (*check) {
    if (outboxd::Status s = outboxd::CheckProducerProperties(config->kafka); !s.ok()) {
      std::cerr << "outboxd: " << config_path << ": " << outboxd::Redact(s.message()) << "\n";
      return kExitConfig;
    }
    for (const std::string& w : outboxd::ProducerPropertyWarnings(config->kafka)) {
      std::cerr << "outboxd: warning: " << config_path << ": " << w << "\n";
    }
    std::cout << config_path << ": ok\n";
    return kExitOk;
  }
  if (*migrate) {
    std::optional<outboxd::Millis> wait = outboxd::ParseDuration(wait_text);
    if (!wait) {
      std::cerr << "outboxd: migrate --wait: not a duration: " << wait_text << "\n";
      return kExitConfig;
    }
    return Migrate(*config, *wait);
  }
  if (*status) return PrintStatus(*config);
  return Run(*config);
}
