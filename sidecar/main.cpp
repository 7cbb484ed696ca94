// outboxd: flags, signals and exit codes. Everything else lives in the library.
//   exit 0: success · exit 2: bad configuration or usage · exit 1: runtime failure
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "admin_commands.h"
#include "admin_server.h"
#include "backoff.h"
#include "checkback.h"
#include "checker.h"
#include "config.h"
#include "doctor.h"
#include "kafka/checkpoint_topic.h"
#include "kafka/producer.h"
#include "log.h"
#include "migrate.h"
#include "outbox_store.h"
#include "pg/connection.h"
#include "prepared_store.h"
#include "relay.h"
#include "scheduler.h"
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
  outboxd::InitLogging(config.log.level, config.log.format == outboxd::LogFormat::kJson);
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
  // The durability check (outboxd doctor) once, on its own thread: each risk is a warning.
  std::thread doctor;
  if (config.doctor.startup_check)
    doctor = std::thread([&config] { outboxd::LogDoctorFindings(config, g_stop); });
  outboxd::PgOutboxStore store(config);
  outboxd::Relay relay(
      config, store,
      [&config] {
        return outboxd::KafkaPublisher::Create(config.kafka, outboxd::TransactionalId(config));
      },
      outboxd::KafkaCheckpointReader(config));
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
  // The admin listener: /metrics, /healthz, /readyz, on its own threads and connection.
  std::optional<outboxd::AdminServer> admin;
  if (!config.admin.listen.empty()) {
    admin.emplace(config, relay, checkback ? &*checkback : nullptr);
    if (outboxd::Status s = admin->Start(); !s.ok()) {
      spdlog::error("{}", s.message());
      g_stop.store(true);  // the start-up doctor's thread ends on it
      if (checkback) checkback->Stop();
      if (doctor.joinable()) doctor.join();
      return kExitRuntime;
    }
  }
  // Delayed messages and inbox retention: their own thread and connection, while the relay leads.
  outboxd::Scheduler scheduler(config, [&relay] { return relay.leader_session(); });
  scheduler.Start(g_stop);
  outboxd::Status s = relay.Run(g_stop);
  scheduler.Stop();
  if (admin) admin->Stop();
  if (checkback) checkback->Stop();
  if (doctor.joinable()) doctor.join();
  if (!s.ok()) {
    spdlog::error("{}", s.message());
    return s.code() == outboxd::Status::Code::kInvalid ? kExitConfig : kExitRuntime;
  }
  return kExitOk;
}

// `outboxd doctor`: exit 0 when nothing is at risk, 1 otherwise.
int Doctor(const outboxd::Config& config, bool json, const std::vector<std::string>& topics) {
  outboxd::DoctorReport report = outboxd::RunDoctor(config, topics);
  std::cout << (json ? report.Json() : report.Text());
  return report.at_risk() ? kExitRuntime : kExitOk;
}

int PrintStatus(const outboxd::Config& config, bool json) {
  auto conn = outboxd::pg::Connection::Open(config.postgres.conninfo, "outboxd status",
                                            outboxd::SessionTcpSettings(config.leadership));
  if (!conn.ok()) {
    std::cerr << "outboxd: " << outboxd::Redact(conn.status().message()) << "\n";
    return kExitRuntime;
  }
  outboxd::Status s = json ? outboxd::WriteStatusJson(*conn, config, std::cout)
                           : outboxd::WriteStatusReport(*conn, config, std::cout);
  if (!s.ok()) {
    std::cerr << "outboxd: " << outboxd::Redact(s.message()) << "\n";
    return kExitRuntime;
  }
  return kExitOk;
}

// An admin command (dead-letters, replay) on its own connection: exit 0, 1 (PostgreSQL or the
// command failed) or 2 (the request itself is wrong: an unknown id, replay without retain).
int AdminCommand(const outboxd::Config& config, const std::string& name,
                 const std::function<outboxd::Status(outboxd::pg::Connection&)>& command) {
  auto conn = outboxd::pg::Connection::Open(config.postgres.conninfo, "outboxd " + name,
                                            outboxd::SessionTcpSettings(config.leadership));
  if (!conn.ok()) {
    std::cerr << "outboxd: " << conn.status().message() << "\n";
    return kExitRuntime;
  }
  outboxd::Status s = command(*conn);
  if (!s.ok()) {
    std::cerr << "outboxd " << name << ": " << s.message() << "\n";
    return s.code() == outboxd::Status::Code::kInvalid ? kExitConfig : kExitRuntime;
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
  outboxd::InitLogging(config.log.level, config.log.format == outboxd::LogFormat::kJson);
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

// Flags > environment > default: the path from --config in either position if given, else
// $OUTBOXD_CONFIG if set and not empty, else the default.
std::string ConfigPath(const std::vector<CLI::Option*>& options, const std::string& parsed) {
  for (const CLI::Option* o : options) {
    if (o->count() > 0) return parsed;
  }
  const char* env = std::getenv("OUTBOXD_CONFIG");
  return env && *env ? std::string(env) : parsed;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"outboxd: a transactional outbox relay from PostgreSQL to Kafka"};
  std::string config_path = "/etc/outboxd/outboxd.toml";
  bool show_version = false;
  // --config beats OUTBOXD_CONFIG, which beats the default (ConfigPath below). No envname(): CLI11
  // applies an option's environment variable when that option was not given, and the top-level
  // and subcommand options share config_path, so the unused one would overwrite the flag.
  std::vector<CLI::Option*> config_options;
  config_options.push_back(
      app.add_option("-c,--config", config_path, "configuration file (env OUTBOXD_CONFIG)")
          ->capture_default_str());
  app.require_subcommand(0, 1);
  auto* run = app.add_subcommand("run", "deliver outbox messages to Kafka (the default)");
  auto* migrate = app.add_subcommand("migrate", "apply pending schema migrations, then exit");
  auto* check = app.add_subcommand("check-config", "validate the configuration without connecting");
  auto* status = app.add_subcommand(
      "status", "show the backlog, dead letters and prepared (half) messages, then exit");
  auto* version = app.add_subcommand("version", "print the version");
  auto* doctor = app.add_subcommand(
      "doctor", "check the durability of Kafka, PostgreSQL and the outbox (exit 1: at risk)");
  bool doctor_json = false;
  std::vector<std::string> doctor_topics;
  doctor->add_flag("--json", doctor_json, "print the findings as JSON");
  doctor->add_option("--topic", doctor_topics,
                     "also check this topic (besides those in the outbox); repeatable");
  bool json = false;
  status->add_flag("--json", json, "one JSON object, for scripts");
  auto* dead = app.add_subcommand("dead-letters", "list, requeue or drop dead letters");
  dead->require_subcommand(1);
  auto* dead_list = dead->add_subcommand("list", "list dead letters in id order");
  int dead_limit = 100;
  dead_list->add_option("--limit", dead_limit, "at most this many")
      ->check(CLI::Range(1, 1'000'000))
      ->capture_default_str();
  auto* dead_requeue = dead->add_subcommand(
      "requeue", "put dead letters back into the outbox (original id and outbox-id), in id order");
  std::vector<int64_t> dead_ids;
  bool dead_all = false;
  dead_requeue->add_option("ids", dead_ids, "dead letter ids");
  dead_requeue->add_flag("--all", dead_all, "every dead letter");
  auto* dead_drop = dead->add_subcommand("drop", "delete dead letters");
  dead_drop->add_option("ids", dead_ids, "dead letter ids")->required();
  auto* replay = app.add_subcommand(
      "replay", "send already-sent rows again (relay.on_sent = \"retain\" keeps them)");
  std::string replay_since;
  int64_t replay_from = 0, replay_to = 0;
  auto* since_opt = replay->add_option(
      "--since", replay_since, "rows created at or after this time (a timestamp, or e.g. 15m ago)");
  auto* from_opt = replay->add_option("--from-id", replay_from, "first id");
  auto* to_opt = replay->add_option("--to-id", replay_to, "last id (default: the newest)");
  to_opt->needs(from_opt);
  since_opt->excludes(from_opt);
  for (auto* sub : {dead_list, dead_requeue, dead_drop, replay}) {
    sub->add_flag("--json", json, "one JSON document, for scripts");
  }
  app.add_flag("-V,--version", show_version, "print the version");
  std::string wait_text = "0s";
  migrate
      ->add_flag("--wait{60s}", wait_text,
                 "retry until PostgreSQL answers, for at most this long (--wait: 60s)")
      ->capture_default_str();
  for (auto* sub :
       {run, migrate, check, status, doctor, dead_list, dead_requeue, dead_drop, replay}) {
    config_options.push_back(
        sub->add_option("-c,--config", config_path, "configuration file (env OUTBOXD_CONFIG)"));
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
    std::cout << "librdkafka " << rd_kafka_version_str() << " (loaded at run time)\n";
    return kExitOk;
  }
  config_path = ConfigPath(config_options, config_path);
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
  if (*status) return PrintStatus(*config, json);
  if (*doctor) return Doctor(*config, doctor_json, doctor_topics);
  const outboxd::CommandOutput out{std::cout, json};
  if (*dead_list) {
    return AdminCommand(*config, "dead-letters list", [&](outboxd::pg::Connection& c) {
      return outboxd::ListDeadLetters(c, dead_limit, out);
    });
  }
  if (*dead_requeue) {
    if (dead_all == !dead_ids.empty()) {
      std::cerr << "outboxd dead-letters requeue: give ids or --all (not both)\n";
      return kExitConfig;
    }
    return AdminCommand(*config, "dead-letters requeue", [&](outboxd::pg::Connection& c) {
      return outboxd::RequeueDeadLetters(c, dead_ids, dead_all, out);
    });
  }
  if (*dead_drop) {
    return AdminCommand(*config, "dead-letters drop", [&](outboxd::pg::Connection& c) {
      return outboxd::DropDeadLetters(c, dead_ids, out);
    });
  }
  if (*replay) {
    outboxd::ReplayRange range;
    if (from_opt->count()) range.from_id = replay_from;
    if (to_opt->count()) range.to_id = replay_to;
    if (since_opt->count()) range.since = replay_since;
    if (!range.from_id && !range.since) {
      std::cerr << "outboxd replay: give --since TIME or --from-id N [--to-id M]\n";
      return kExitConfig;
    }
    return AdminCommand(*config, "replay", [&](outboxd::pg::Connection& c) {
      return outboxd::Replay(c, *config, range, out);
    });
  }
  return Run(*config);
}
