#include "kafka/producer.h"
#include <cctype>

#include <algorithm>
#include <string_view>

#include <spdlog/spdlog.h>

#include "kafka/tls_verify.h"

namespace outboxd {

DeliveryReport::Outcome ClassifyDeliveryError(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
      return DeliveryReport::Outcome::kPersisted;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:  // larger than the broker or producer accepts
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:  // invalid topic name
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
      return DeliveryReport::Outcome::kPermanent;
    // The topic, not the message: the topic does not exist (librdkafka's after
    // topic.metadata.propagation.max.ms, or the broker's) or outboxd may not write it.
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
      return DeliveryReport::Outcome::kTopicUnavailable;
    default:
      return DeliveryReport::Outcome::kRetriable;
  }
}

std::map<std::string, std::string> ProducerProperties(const KafkaConfig& config,
                                                      const std::string& transactional_id) {
  std::map<std::string, std::string> p = {
      {"client.id", "outboxd"},
      {"linger.ms", "2"},
      {"socket.keepalive.enable", "true"},
      // Never give up on a message: a timed-out message leaves a gap that later messages of its
      // partition (and key) could overtake. The outbox is the buffer; max_in_flight bounds it.
      {"message.timeout.ms", "0"},
      // One request in flight per broker: a later batch of a partition can't overtake an earlier
      // one that waits for a retry (with 5, a batch that failed with NOT_LEADER on a new partition
      // was overtaken and then "implicitly acked"; re-sending it broke its key's order).
      {"max.in.flight.requests.per.connection", "1"},
  };
  for (const auto& [k, v] : config.properties) p[k] = v;
  if (config.properties.count("max.in.flight")) {
    p.erase("max.in.flight.requests.per.connection");  // the user's alias wins over our default
  }
  // The guarantees, which Config already refuses to let anyone change.
  p["bootstrap.servers"] = config.bootstrap_servers;
  p["enable.idempotence"] = "true";
  p["acks"] = "all";
  p["partitioner"] = "murmur2_random";
  // An error that could leave a gap in a partition's sequence is fatal: the relay rebuilds the
  // producer and re-sends from PostgreSQL, so no later message of a key overtakes an earlier one.
  p["enable.gapless.guarantee"] = "true";
  if (!transactional_id.empty()) p["transactional.id"] = transactional_id;
  return p;
}

std::vector<std::string> ProducerPropertyWarnings(const KafkaConfig& config) {
  std::vector<std::string> out;
  for (const char* name : {"max.in.flight.requests.per.connection", "max.in.flight"}) {
    auto it = config.properties.find(name);
    if (it != config.properties.end() && it->second != "1") {
      out.push_back(std::string("kafka.properties.\"") + name + "\" = " + it->second +
                    ": with more than one request in flight, a later batch can overtake a "
                    "failed one on a new partition leader, and messages of a key can then "
                    "arrive out of order (none is lost). The default 1 keeps the order.");
    }
  }
  return out;
}

namespace {

// Why Kafka would refuse `topic` as a name, or "" if it is legal: 1 to 249 characters of
// [a-zA-Z0-9._-], and not "." or ".." (Kafka's Topic.validate). Checked before producing: the
// broker answers such a name with INVALID_TOPIC and librdkafka then keeps the message waiting
// for the topic's metadata, forever with message.timeout.ms = 0.
std::string InvalidTopicName(const std::string& topic) {
  if (topic.empty()) return "empty";
  if (topic.size() > 249) return std::to_string(topic.size()) + " characters (at most 249)";
  if (topic == "." || topic == "..") return "\".\" and \"..\" are not allowed";
  for (char c : topic) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return "only ASCII letters, digits, '.', '_' and '-' are allowed";
    }
  }
  return "";
}

// librdkafka's log lines, at outboxd's levels (librdkafka's syslog levels: 0-3 errors,
// 4 warning, 5-6 info, 7 debug), less two kinds that would only repeat or can't be acted on.
void OnLog(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  auto lvl = level <= 3   ? spdlog::level::err
             : level == 4 ? spdlog::level::warn
                          : spdlog::level::debug;
  const std::string_view facility(fac), text(buf);
  // A broker connection failure comes again through the error callback (OnError), said once.
  if (facility == "FAIL") lvl = spdlog::level::debug;
  // A refused certificate is said once a minute by the verify callback (kafka/tls_verify).
  if (facility == "SSLCERTVRFY") lvl = spdlog::level::debug;
  // outboxd sets enable.gapless.guarantee on purpose; librdkafka calls it experimental.
  if (facility == "CONFWARN" && text.find("enable.gapless.guarantee") != std::string_view::npos) {
    lvl = spdlog::level::debug;
  }
  spdlog::log(lvl, "kafka {}: {}", fac, buf);
}

// A conf with every property outboxd would set; Invalid naming the property librdkafka refuses.
Result<KafkaConfPtr> MakeConf(const std::map<std::string, std::string>& properties) {
  KafkaConfPtr conf(rd_kafka_conf_new());
  char err[512];
  for (const auto& [k, v] : properties) {
    if (rd_kafka_conf_set(conf.get(), k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      return Status::Invalid("kafka.properties \"" + k + "\": " + err);
    }
  }
  return conf;
}

}  // namespace

Status CheckProducerProperties(const KafkaConfig& config) {
  auto properties = ProducerProperties(config);
  properties.erase("bootstrap.servers");  // no broker: the check connects nowhere
  auto conf = MakeConf(properties);
  if (!conf.ok()) return conf.status();
  rd_kafka_conf_set_log_cb(conf->get(), [](const rd_kafka_t*, int, const char*, const char*) {});
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf->get(), err, sizeof(err));
  if (rk == nullptr) return Status::Invalid(std::string("kafka producer: ") + err);
  conf->release();  // rd_kafka_new took ownership on success
  rd_kafka_destroy(rk);
  return Status::Ok();
}

Result<PublisherPtr> KafkaPublisher::Create(const KafkaConfig& config,
                                            const std::string& transactional_id) {
  auto made = MakeConf(ProducerProperties(config, transactional_id));
  if (!made.ok()) return made.status();
  KafkaConfPtr conf = std::move(*made);
  char err[512];
  std::unique_ptr<KafkaPublisher> pub(new KafkaPublisher());
  rd_kafka_conf_set_opaque(conf.get(), pub.get());
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &KafkaPublisher::OnDelivery);
  rd_kafka_conf_set_error_cb(conf.get(), &KafkaPublisher::OnError);
  rd_kafka_conf_set_log_cb(conf.get(), &OnLog);
  InstallCertificateVerifyReasons(conf.get());
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof(err));
  if (rk == nullptr) return Status::Invalid(std::string("kafka producer: ") + err);
  conf.release();  // rd_kafka_new took ownership on success
  pub->rk_.reset(rk);
  return PublisherPtr(std::move(pub));
}

KafkaPublisher::~KafkaPublisher() {
  if (!rk_) return;
  // Whatever is still queued is failed locally; its rows stay in the outbox.
  rd_kafka_purge(rk_.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_poll(rk_.get(), 0);
  topics_.clear();
}

rd_kafka_topic_t* KafkaPublisher::Topic(const std::string& name) {
  auto it = topics_.find(name);
  if (it != topics_.end()) return it->second.get();
  rd_kafka_topic_t* t = rd_kafka_topic_new(rk_.get(), name.c_str(), nullptr);
  if (t == nullptr) return nullptr;
  topics_.emplace(name, KafkaTopicPtr(t));
  return t;
}

Status KafkaPublisher::Produce(const OutgoingMessage& m, uint64_t token) {
  if (std::string why = InvalidTopicName(*m.topic); !why.empty()) {
    return Status::Permanent("invalid topic name \"" + m.topic->substr(0, 300) + "\": " + why);
  }
  rd_kafka_topic_t* topic = Topic(*m.topic);
  if (topic == nullptr) {
    return Status::Permanent("invalid topic \"" + *m.topic +
                             "\": " + rd_kafka_err2str(rd_kafka_last_error()));
  }
  rd_kafka_headers_t* headers = rd_kafka_headers_new(m.headers->size());
  for (const auto& [name, value] : *m.headers) {
    rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()),
                        value ? value->data() : nullptr,
                        value ? static_cast<ssize_t>(value->size()) : 0);
  }
  // The RD_KAFKA_V_* macros cast their arguments textually: pass plain variables.
  const void* key = m.key->has_value() ? (*m.key)->data() : nullptr;
  size_t key_len = m.key->has_value() ? (*m.key)->size() : 0;
  void* value = m.payload->has_value() ? const_cast<char*>((*m.payload)->data()) : nullptr;
  size_t value_len = m.payload->has_value() ? (*m.payload)->size() : 0;
  void* opaque = reinterpret_cast<void*>(token);
  rd_kafka_resp_err_t err =
      rd_kafka_producev(rk_.get(), RD_KAFKA_V_RKT(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE(value, value_len),
                        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::Ok();
  rd_kafka_headers_destroy(headers);  // ownership passes only on success
  std::string what = rd_kafka_err2str(err);
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return Status::QueueFull(what);
  if (err == RD_KAFKA_RESP_ERR__FATAL) return Status::Fatal(FatalError().value_or(what));
  switch (ClassifyDeliveryError(err)) {
    case DeliveryReport::Outcome::kPermanent:
      return Status::Permanent(what);
    case DeliveryReport::Outcome::kTopicUnavailable:
      return Status::TopicUnavailable(what);
    default:
      return Status::Unavailable(what);
  }
}

void KafkaPublisher::Poll(Millis timeout, std::vector<DeliveryReport>* reports) {
  reports->insert(reports->end(), std::make_move_iterator(unserved_.begin()),
                  std::make_move_iterator(unserved_.end()));
  unserved_.clear();
  sink_ = reports;
  // A negative timeout would make rd_kafka_poll wait forever.
  rd_kafka_poll(rk_.get(), static_cast<int>(std::max<int64_t>(0, timeout.count())));
  sink_ = nullptr;
}

void KafkaPublisher::OnDelivery(rd_kafka_t*, const rd_kafka_message_t* msg, void* opaque) {
  auto* self = static_cast<KafkaPublisher*>(opaque);
  DeliveryReport r;
  r.token = reinterpret_cast<uint64_t>(msg->_private);
  r.outcome = ClassifyDeliveryError(msg->err);
  if (r.outcome == DeliveryReport::Outcome::kPersisted &&
      rd_kafka_message_status(msg) != RD_KAFKA_MSG_STATUS_PERSISTED) {
    r.outcome = DeliveryReport::Outcome::kRetriable;  // never remove what is not persisted
  }
  if (msg->err) r.error = rd_kafka_err2str(msg->err);
  r.error_code = msg->err;
  r.offset = msg->offset >= 0 ? msg->offset : DeliveryReport::kNoOffset;
  r.partition = msg->partition;
  if (r.outcome == DeliveryReport::Outcome::kPersisted && !self->outage_errors_.empty()) {
    auto secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - self->outage_since_)
            .count();
    spdlog::info("kafka: reachable again after {:.1f}s ({} repeated error{} not shown)", secs,
                 self->outage_repeats_, self->outage_repeats_ == 1 ? "" : "s");
    self->outage_errors_.clear();
    self->outage_repeats_ = 0;
  }
  (self->sink_ ? self->sink_ : &self->unserved_)->push_back(std::move(r));
}

void KafkaPublisher::OnError(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* self = static_cast<KafkaPublisher*>(opaque);
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char buf[512];
    rd_kafka_fatal_error(rk, buf, sizeof(buf));
    spdlog::error("kafka: fatal producer error: {}", buf);
    return;
  }
  // Transport errors repeat while a broker is down (with changing detail): say each kind once.
  std::string text = reason ? reason : rd_kafka_err2str(static_cast<rd_kafka_resp_err_t>(err));
  if (self->outage_errors_.empty()) self->outage_since_ = std::chrono::steady_clock::now();
  if (self->outage_errors_.insert(err).second) {
    spdlog::warn("kafka: {}", text);
  } else {
    ++self->outage_repeats_;
    spdlog::debug("kafka: {}", text);
  }
}

std::optional<std::string> KafkaPublisher::FatalError() {
  char buf[512];
  rd_kafka_resp_err_t err = rd_kafka_fatal_error(rk_.get(), buf, sizeof(buf));
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return std::nullopt;
  return std::string(rd_kafka_err2name(err)) + ": " + buf;
}

void KafkaPublisher::PurgeAll() {
  rd_kafka_purge(rk_.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
}

}  // namespace outboxd

namespace outboxd {

namespace {

// librdkafka's transactional error object, as a Status (and destroyed): fatal first (a fenced
// producer is fatal), then abortable, then retriable; an error with none of the flags is fatal,
// as librdkafka's documentation recommends.
Status TransactionStatus(rd_kafka_error_t* error, const char* call) {
  if (error == nullptr) return Status::Ok();
  std::string what =
      std::string(call) + ": " + rd_kafka_error_name(error) + ": " + rd_kafka_error_string(error);
  Status s = rd_kafka_error_is_fatal(error)             ? Status::Fatal(what)
             : rd_kafka_error_txn_requires_abort(error) ? Status::AbortRequired(what)
             : rd_kafka_error_is_retriable(error)       ? Status::Unavailable(what)
                                                        : Status::Fatal(what);
  rd_kafka_error_destroy(error);
  return s;
}

int TimeoutMs(Millis timeout) { return static_cast<int>(std::max<int64_t>(0, timeout.count())); }

}  // namespace

Status KafkaPublisher::InitTransactions(Millis timeout) {
  return TransactionStatus(rd_kafka_init_transactions(rk_.get(), TimeoutMs(timeout)),
                           "init_transactions");
}

Status KafkaPublisher::BeginTransaction() {
  return TransactionStatus(rd_kafka_begin_transaction(rk_.get()), "begin_transaction");
}

Status KafkaPublisher::CommitTransaction(Millis timeout) {
  return TransactionStatus(rd_kafka_commit_transaction(rk_.get(), TimeoutMs(timeout)),
                           "commit_transaction");
}

Status KafkaPublisher::AbortTransaction(Millis timeout) {
  return TransactionStatus(rd_kafka_abort_transaction(rk_.get(), TimeoutMs(timeout)),
                           "abort_transaction");
}

}  // namespace outboxd
