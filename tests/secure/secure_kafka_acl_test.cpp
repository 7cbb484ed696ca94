// The least Kafka ACLs outboxd needs, on a broker that allows nothing without an ACL (KRaft's
// StandardAuthorizer, `scripts/kafka.sh start secure`). Principal User:outboxd_acl over SASL_SSL
// has only what each test grants (its topic and cluster ACLs are deleted at the end) and, from the
// script, Write on transactional ids starting with acl_txn_ (librdkafka 2.0.2 cannot grant those).
// With the minimum set outboxd delivers every row, in both delivery modes; with one ACL missing it
// logs the broker's refusal, delivers nothing and keeps every row, and once the ACL is there every
// row arrives.
#include <gtest/gtest.h>

#include "secure_support.h"

namespace outboxd::testing {
namespace {

class KafkaAcls : public SecureKafka {
 protected:
  void TearDown() override {
    if (!broker_.plaintext.empty()) {
      EXPECT_EQ(DeleteAcls(broker_.plaintext, Principal()), "");
    }
    SecureKafka::TearDown();
  }
  std::string Principal() const { return "User:" + broker_.acl_user; }
  std::string Toml() const { return SaslToml(broker_.password_file, broker_.acl_user); }
  void Grant(const std::vector<Acl>& acls) {
    ASSERT_EQ(GrantAcls(broker_.plaintext, Principal(), acls), "");
  }
  // [relay] for exactly-once with `transactional_id` and a checkpoint topic of this test's own.
  std::string ExactlyOnceToml(const std::string& transactional_id) const {
    return "delivery = \"exactly_once\"\ntransactional_id = \"" + transactional_id +
           "\"\ncheckpoint_topic = \"" + checkpoint_topic_ + "\"\n";
  }
  // The minimum for at-least-once: Write on the topic. Write implies Describe, and since Kafka 3.0
  // Write on any topic stands in for IdempotentWrite on the cluster (the idempotent producer's
  // InitProducerId).
  std::vector<Acl> AtLeastOnceMinimum() const {
    return {{RD_KAFKA_RESOURCE_TOPIC, topic_, RD_KAFKA_ACL_OPERATION_WRITE}};
  }
  // Exactly-once adds, on the checkpoint topic, Read and Write, and Create because outboxd creates
  // it when it is missing (as here); Write on the transactional id comes from the script.
  std::vector<Acl> ExactlyOnceMinimum() const {
    std::vector<Acl> acls = AtLeastOnceMinimum();
    for (auto op : {RD_KAFKA_ACL_OPERATION_READ, RD_KAFKA_ACL_OPERATION_WRITE,
                    RD_KAFKA_ACL_OPERATION_CREATE}) {
      acls.push_back({RD_KAFKA_RESOURCE_TOPIC, checkpoint_topic_, op});
    }
    return acls;
  }

  const std::string checkpoint_topic_ = UniqueName("ckpt");
  const std::string granted_transactional_id_ = UniqueName("acl_txn");  // the script's prefix
};

TEST_F(KafkaAcls, AtLeastOnceDeliversWithTheMinimum) {
  Grant(AtLeastOnceMinimum());
  ExpectDelivery(Toml());
}

// No Write anywhere: the idempotent producer gets no producer id (a fatal error each time; outboxd
// rebuilds the producer with back-off). Granting Write on the topic fixes it, outboxd running.
TEST_F(KafkaAcls, AtLeastOnceWithoutWriteFailsUntilGranted) {
  Grant({{RD_KAFKA_RESOURCE_TOPIC, topic_, RD_KAFKA_ACL_OPERATION_DESCRIBE}});
  ExpectErrorUntilFixed(Toml(), "", "Cluster authorization failed",
                        [&] { Grant(AtLeastOnceMinimum()); });
}

// Write on another topic, not on this one: the broker refuses the records themselves; the rows stay
// and go again once Write on this topic is granted.
TEST_F(KafkaAcls, AtLeastOnceWithoutWriteOnOneTopicFailsUntilGranted) {
  Grant({{RD_KAFKA_RESOURCE_TOPIC, topic_, RD_KAFKA_ACL_OPERATION_DESCRIBE},
         {RD_KAFKA_RESOURCE_TOPIC, UniqueName("other"), RD_KAFKA_ACL_OPERATION_WRITE}});
  ExpectErrorUntilFixed(Toml(), "", "Topic authorization failed",
                        [&] { Grant(AtLeastOnceMinimum()); });
}

TEST_F(KafkaAcls, ExactlyOnceDeliversWithTheMinimum) {
  topics_.push_back(checkpoint_topic_);  // deleted at the end
  Grant(ExactlyOnceMinimum());
  ExpectDelivery(Toml(), ExactlyOnceToml(granted_transactional_id_));
}

// A transactional id without Write: refused before any transaction; a restart with an id that has
// it delivers every row.
TEST_F(KafkaAcls, ExactlyOnceWithoutWriteOnTheTransactionalIdFails) {
  topics_.push_back(checkpoint_topic_);
  Grant(ExactlyOnceMinimum());
  ExpectErrorThenRecovery(Toml(), "Transactional Id authorization failed", Toml(),
                          ExactlyOnceToml(UniqueName("txn")),
                          ExactlyOnceToml(granted_transactional_id_));
}

}  // namespace
}  // namespace outboxd::testing
