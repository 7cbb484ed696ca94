#include "secure_support.h"

#include <csignal>
#include <cstdio>
#include <fstream>

namespace outboxd::testing {
namespace {

using std::chrono::seconds;

struct AdminHandle {
  rd_kafka_t* rk = nullptr;
  rd_kafka_queue_t* queue = nullptr;
  std::string error;
  explicit AdminHandle(const std::string& bootstrap) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof(err));
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == nullptr) {
      error = err;
      rd_kafka_conf_destroy(conf);
      return;
    }
    queue = rd_kafka_queue_new(rk);
  }
  ~AdminHandle() {
    if (queue) rd_kafka_queue_destroy(queue);
    if (rk) rd_kafka_destroy(rk);
  }
  // The result event of the request just sent (nullptr after 15 s); the caller destroys it.
  rd_kafka_event_t* Wait() { return rd_kafka_queue_poll(queue, 15000); }
};

std::string EventError(rd_kafka_event_t* ev) {
  if (ev == nullptr) return "no answer from the broker in 15 s";
  if (rd_kafka_event_error(ev)) return rd_kafka_event_error_string(ev);
  return "";
}

}  // namespace

SecureBroker ReadSecureEnv() {
  SecureBroker b;
  std::string cmd = std::string(OUTBOXD_SOURCE_DIR) + "/scripts/kafka.sh env secure 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return b;
  char line[1024];
  while (fgets(line, sizeof(line), p) != nullptr) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    auto eq = l.find('=');
    if (l.rfind("export ", 0) != 0 || eq == std::string::npos) continue;
    std::string k = l.substr(7, eq - 7), v = l.substr(eq + 1);
    if (k == "OUTBOXD_SECURE_KAFKA_PLAINTEXT") b.plaintext = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SASL_SSL") b.sasl_ssl = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SSL") b.ssl = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SCRAM_USER") b.user = v;
    if (k == "OUTBOXD_SECURE_KAFKA_ACL_USER") b.acl_user = v;
    if (k == "OUTBOXD_SECURE_KAFKA_SCRAM_PASSWORD_FILE") b.password_file = v;
    if (k == "OUTBOXD_CERTS") b.certs = v;
  }
  pclose(p);
  std::ifstream pw(b.password_file);
  std::getline(pw, b.password);
  return b;
}

std::string GrantAcls(const std::string& plaintext, const std::string& principal,
                      const std::vector<Acl>& acls) {
  AdminHandle admin(plaintext);
  if (!admin.error.empty()) return admin.error;
  std::vector<rd_kafka_AclBinding_t*> bindings;
  char err[512];
  for (const Acl& a : acls) {
    rd_kafka_AclBinding_t* b = rd_kafka_AclBinding_new(
        a.type, a.name.c_str(), RD_KAFKA_RESOURCE_PATTERN_LITERAL, principal.c_str(), "*",
        a.operation, RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW, err, sizeof(err));
    if (b == nullptr) {
      rd_kafka_AclBinding_destroy_array(bindings.data(), bindings.size());
      return err;
    }
    bindings.push_back(b);
  }
  rd_kafka_CreateAcls(admin.rk, bindings.data(), bindings.size(), nullptr, admin.queue);
  rd_kafka_AclBinding_destroy_array(bindings.data(), bindings.size());
  rd_kafka_event_t* ev = admin.Wait();
  std::string error = EventError(ev);
  if (error.empty()) {
    size_t n = 0;
    const rd_kafka_acl_result_t** results =
        rd_kafka_CreateAcls_result_acls(rd_kafka_event_CreateAcls_result(ev), &n);
    for (size_t i = 0; i < n && error.empty(); ++i) {
      if (const rd_kafka_error_t* e = rd_kafka_acl_result_error(results[i])) {
        error = rd_kafka_error_string(e);
      }
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  return error;
}

std::string DeleteAcls(const std::string& plaintext, const std::string& principal) {
  AdminHandle admin(plaintext);
  if (!admin.error.empty()) return admin.error;
  char err[512];
  std::vector<rd_kafka_AclBindingFilter_t*> filters;
  for (auto type : {RD_KAFKA_RESOURCE_TOPIC, RD_KAFKA_RESOURCE_BROKER}) {
    rd_kafka_AclBindingFilter_t* f = rd_kafka_AclBindingFilter_new(
        type, nullptr, RD_KAFKA_RESOURCE_PATTERN_ANY, principal.c_str(), nullptr,
        RD_KAFKA_ACL_OPERATION_ANY, RD_KAFKA_ACL_PERMISSION_TYPE_ANY, err, sizeof(err));
    if (f == nullptr) {
      rd_kafka_AclBinding_destroy_array(filters.data(), filters.size());
      return err;
    }
    filters.push_back(f);
  }
  rd_kafka_DeleteAcls(admin.rk, filters.data(), filters.size(), nullptr, admin.queue);
  rd_kafka_AclBinding_destroy_array(filters.data(), filters.size());
  rd_kafka_event_t* ev = admin.Wait();
  std::string error = EventError(ev);
  if (ev) rd_kafka_event_destroy(ev);
  return error;
}

std::string SetBrokerConfigs(const std::string& plaintext,
                             const std::vector<std::pair<std::string, std::string>>& configs) {
  AdminHandle admin(plaintext);
  if (!admin.error.empty()) return admin.error;
  rd_kafka_ConfigResource_t* res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_BROKER, "1");
  for (const auto& [k, v] : configs) rd_kafka_ConfigResource_set_config(res, k.c_str(), v.c_str());
  rd_kafka_AlterConfigs(admin.rk, &res, 1, nullptr, admin.queue);
  rd_kafka_ConfigResource_destroy(res);
  rd_kafka_event_t* ev = admin.Wait();
  std::string error = EventError(ev);
  if (error.empty()) {
    size_t n = 0;
    const rd_kafka_ConfigResource_t** results =
        rd_kafka_AlterConfigs_result_resources(rd_kafka_event_AlterConfigs_result(ev), &n);
    for (size_t i = 0; i < n && error.empty(); ++i) {
      if (rd_kafka_ConfigResource_error(results[i])) {
        error = rd_kafka_ConfigResource_error_string(results[i]);
      }
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  return error;
}

std::string PresentedSubject(const std::string& address) {
  std::string cmd = "openssl s_client -connect " + address +
                    " </dev/null 2>/dev/null | openssl x509 -noout -subject 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  char line[1024] = {0};
  if (fgets(line, sizeof(line), p) == nullptr) line[0] = '\0';
  pclose(p);
  std::string s(line);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

void SecureKafka::SetUp() {
  OUTBOXD_REQUIRE_SERVICES(services_);
  broker_ = ReadSecureEnv();
  std::string missing;
  if (broker_.plaintext.empty() || broker_.password.empty() || broker_.acl_user.empty()) {
    missing = "scripts/kafka.sh env secure gave no broker, password or ACL user";
  } else if (!BrokerAnswers(broker_.plaintext)) {
    missing = "secure Kafka at " + broker_.plaintext;
  }
  if (!missing.empty()) {
    if (InCi()) FAIL() << "secure Kafka missing under CI: " << missing;
    GTEST_SKIP() << "secure Kafka missing (scripts/kafka.sh start secure): " << missing;
  }
  // The witness, CreateTopic and the topic cleanup use the PLAINTEXT listener (the super user).
  services_.kafka_bootstrap = broker_.plaintext;
  db_.emplace(services_);
  topic_ = NewTopic("sec", kPartitions);
}

void SecureKafka::TearDown() {
  // No password in any log of this test (the right one, and the wrong one of the negative tests).
  for (const auto& [name, text] : logs_) {
    for (const std::string& secret : {broker_.password, std::string(kWrongPassword)}) {
      if (secret.empty()) continue;
      size_t at = text.find(secret);
      EXPECT_EQ(at, std::string::npos)
          << name << " shows a password: ..."
          << text.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0), 400) << "...";
    }
  }
  ServicesTest::TearDown();
}

std::string SecureKafka::SaslToml(const std::string& password_file, const std::string& user,
                                  const std::string& mechanism) const {
  return "bootstrap_servers = \"" + broker_.sasl_ssl +
         "\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n"
         "\"sasl.mechanism\" = \"" +
         mechanism + "\"\n\"sasl.username\" = \"" + (user.empty() ? broker_.user : user) +
         "\"\n\"ssl.ca.location\" = \"" + broker_.certs +
         "/ca.pem\"\n[kafka.property_files]\n\"sasl.password\" = \"" + password_file + "\"\n";
}

std::string SecureKafka::MtlsToml(const std::string& ca) const {
  return "bootstrap_servers = \"" + broker_.ssl +
         "\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"" +
         (ca.rfind('/', 0) == 0 ? ca : broker_.certs + "/" + ca) +
         "\"\n\"ssl.certificate.location\" = \"" + broker_.certs +
         "/client.pem\"\n\"ssl.key.location\" = \"" + broker_.certs + "/client.key\"\n";
}

std::unique_ptr<OutboxdProcess> SecureKafka::Run(const std::string& kafka_toml,
                                                 const std::string& relay_toml) {
  // OutboxdProcess writes a configuration for the plain broker; this test's replaces it.
  auto p = std::make_unique<OutboxdProcess>(services_, *db_);
  std::ofstream(p->config_path())
      << "[postgres]\nconninfo = \"" << db_->conninfo()
      << "\"\n[relay]\nidle_grace = \"50ms\"\nshutdown_timeout = \"1s\"\n"
      << relay_toml << "\n[backoff]\ninitial = \"50ms\"\nmax = \"1s\"\n[leadership]\n"
      << "retry_interval = \"200ms\"\n"
      // A free port: the default one may be another outboxd's (the demo's).
      << "[admin]\nlisten = \"127.0.0.1:0\"\n[kafka]\n"
      << kafka_toml;
  p->Start();
  return p;
}

size_t SecureKafka::OutboxRows() const {
  return std::stoul(db_->Scalar("SELECT count(*) FROM outbox.messages"));
}

void SecureKafka::ExpectDelivery(const std::string& kafka_toml, const std::string& relay_toml) {
  ExpectedMessages expected = PublishMany(30, 5, topic_);
  auto outboxd = Run(kafka_toml, relay_toml);
  Consumer witness(services_, topic_);
  EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << outboxd->Log().substr(0, 6000);
  DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
  outboxd->Kill(SIGTERM);
  EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
  Keep("delivering run", *outboxd);
}

void SecureKafka::ExpectErrorThenRecovery(const std::string& bad_toml, const std::string& error,
                                          const std::string& good_toml,
                                          const std::string& bad_relay,
                                          const std::string& good_relay) {
  ExpectedMessages expected = PublishMany(20, 4, topic_);
  auto bad = Run(bad_toml, bad_relay);
  EXPECT_TRUE(bad->WaitForLog(error, seconds(30))) << bad->Log().substr(0, 4000);
  ExpectedMessages more = PublishMany(10, 4, topic_);
  expected.insert(more.begin(), more.end());
  Consumer witness(services_, topic_);
  // While it fails for several retries, nothing reaches the topic and every row stays.
  EXPECT_TRUE(bad->running());
  EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(3000)).empty());
  EXPECT_EQ(OutboxRows(), expected.size());
  bad->Kill(SIGTERM);
  EXPECT_EQ(bad->Wait(seconds(15)), 0);
  Keep("failing run", *bad);
  auto good = Run(good_toml, good_relay);
  EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(30))) << good->Log().substr(0, 4000);
  DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(check.lost, 0u);
  EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
  good->Kill(SIGTERM);
  EXPECT_EQ(good->Wait(seconds(15)), 0);
  Keep("fixed run", *good);
}

void SecureKafka::ExpectErrorUntilFixed(const std::string& kafka_toml,
                                        const std::string& relay_toml, const std::string& error,
                                        const std::function<void()>& fix) {
  ExpectedMessages expected = PublishMany(20, 4, topic_);
  auto outboxd = Run(kafka_toml, relay_toml);
  EXPECT_TRUE(outboxd->WaitForLog(error, seconds(30))) << outboxd->Log().substr(0, 6000);
  ExpectedMessages more = PublishMany(10, 4, topic_);
  expected.insert(more.begin(), more.end());
  Consumer witness(services_, topic_);
  EXPECT_TRUE(outboxd->running());
  EXPECT_TRUE(witness.ReadFor(std::chrono::milliseconds(2000)).empty());
  EXPECT_EQ(OutboxRows(), expected.size());
  fix();
  EXPECT_TRUE(witness.ReadUntilIds(Ids(expected), seconds(45))) << outboxd->Log().substr(0, 6000);
  DeliveryCheck check = CheckDelivery(expected, witness.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(check.lost, 0u);
  EXPECT_TRUE(WaitFor([&] { return OutboxRows() == 0; }, seconds(10)));
  outboxd->Kill(SIGTERM);
  EXPECT_EQ(outboxd->Wait(seconds(15)), 0);
  Keep("failing, then fixed run", *outboxd);
}

}  // namespace outboxd::testing
