// Shared by the secure tests: the secured broker of `scripts/kafka.sh start secure` (its
// addresses, users and files), its administration as the super user over the PLAINTEXT listener
// (ACLs, the SSL listener's keystore), and the SecureKafka fixture that runs outboxd against it.
#pragma once

#include <librdkafka/rdkafka.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {

struct SecureBroker {
  std::string plaintext, sasl_ssl, ssl, user, acl_user, password_file, password, certs;
};

// The addresses and files from `scripts/kafka.sh env secure` (same OUTBOXD_SECURE_KAFKA_PORT).
SecureBroker ReadSecureEnv();

// One ACL that allows an operation on a literal topic or the cluster (RD_KAFKA_RESOURCE_BROKER,
// name "kafka-cluster"), from any host. librdkafka 2.0.2 cannot name a transactional id (Kafka's
// resource type 5): `scripts/kafka.sh start secure` grants those (prefix acl_txn_ to outboxd_acl).
struct Acl {
  rd_kafka_ResourceType_t type;
  std::string name;
  rd_kafka_AclOperation_t operation;
};
// Grants the ACLs to `principal` on the broker at `plaintext` (its super user); "" or the error.
std::string GrantAcls(const std::string& plaintext, const std::string& principal,
                      const std::vector<Acl>& acls);
// Deletes every topic and cluster ACL of `principal`; "" or the error.
std::string DeleteAcls(const std::string& plaintext, const std::string& principal);
// Sets the dynamic configuration of broker 1 to exactly `configs` (AlterConfigs replaces the
// broker's dynamic configuration); "" or the error.
std::string SetBrokerConfigs(const std::string& plaintext,
                             const std::vector<std::pair<std::string, std::string>>& configs);
// The subject of the certificate a TLS server at `address` presents ("" if none), via openssl.
std::string PresentedSubject(const std::string& address);

inline constexpr const char* kWrongPassword = "Wrong-Sasl-Pw-5e1b7c";

// A fresh database and topic (on the secure broker, witnessed over its PLAINTEXT listener) per
// test; outboxd run with [kafka] settings of the test's choice, as User:outboxd over SASL or
// User:CN=outboxd over mTLS (`scripts/kafka.sh start secure` allows them everything on topics and
// transactional ids). No log kept with Keep() may show a password.
class SecureKafka : public ServicesTest {
 protected:
  void SetUp() override;
  void TearDown() override;

  // [kafka] settings for SASL_SSL (PLAIN, or `mechanism`) as `user` with the password read from
  // `password_file`.
  std::string SaslToml(const std::string& password_file, const std::string& user = "",
                       const std::string& mechanism = "PLAIN") const;
  // [kafka] settings for SSL with the client certificate, trusting `ca` (a file of the test
  // certificates, or an absolute path).
  std::string MtlsToml(const std::string& ca) const;
  // Writes a full configuration for `kafka_toml` (and `relay_toml` in [relay]) and starts outboxd.
  std::unique_ptr<OutboxdProcess> Run(const std::string& kafka_toml,
                                      const std::string& relay_toml = "");
  void Keep(const std::string& name, const OutboxdProcess& p) { logs_.emplace_back(name, p.Log()); }
  size_t OutboxRows() const;

  // Delivers over `kafka_toml`; every row arrives once checked by the witness.
  void ExpectDelivery(const std::string& kafka_toml, const std::string& relay_toml = "");
  // Starts with `bad_toml` (and `bad_relay` in [relay]): the log names `error` and nothing
  // arrives; then a restart with `good_toml` (`good_relay`) delivers every row, the ones written
  // during the failure included.
  void ExpectErrorThenRecovery(const std::string& bad_toml, const std::string& error,
                               const std::string& good_toml, const std::string& bad_relay = "",
                               const std::string& good_relay = "");
  // outboxd runs with `kafka_toml` and fails with `error` in its log: nothing arrives, every row
  // stays (more are written meanwhile). Then `fix` repairs the broker's side while outboxd keeps
  // running; every row arrives, none lost.
  void ExpectErrorUntilFixed(const std::string& kafka_toml, const std::string& relay_toml,
                             const std::string& error, const std::function<void()>& fix);

  SecureBroker broker_;
  std::vector<std::pair<std::string, std::string>> logs_;
};

}  // namespace outboxd::testing
