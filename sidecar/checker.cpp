#include "checker.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

namespace outboxd {
namespace {

constexpr Oid kInt8Oid = 20;
constexpr Oid kTextOid = 25;
constexpr Oid kJsonbOid = 3802;

std::string Excerpt(const std::string& text) {
  return text.size() <= 100 ? text : text.substr(0, 100) + "...";
}

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kCommit:
      return "commit";
    case Verdict::kRollback:
      return "rollback";
    case Verdict::kUnknown:
      return "unknown";
  }
  return "unknown";
}

std::optional<Verdict> ParseVerdict(std::string_view word) {
  if (word == "commit") return Verdict::kCommit;
  if (word == "rollback") return Verdict::kRollback;
  if (word == "unknown") return Verdict::kUnknown;
  return std::nullopt;
}

CheckAnswer ParseHttpAnswer(int http_status, const std::string& body) {
  if (http_status < 200 || http_status >= 300) {
    return {Verdict::kUnknown, "HTTP " + std::to_string(http_status)};
  }
  auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("status") ||
      !json["status"].is_string()) {
    return {Verdict::kUnknown, "answer is not {\"status\": ...}: " + Excerpt(body)};
  }
  auto verdict = ParseVerdict(json["status"].get<std::string>());
  if (!verdict) {
    return {Verdict::kUnknown, "status must be commit, rollback or unknown: " + Excerpt(body)};
  }
  return {*verdict, ""};
}

std::string CheckRequestBody(const PreparedMessage& m) {
  nlohmann::json body;
  body["id"] = m.id;
  body["topic"] = m.topic;
  body["key"] = m.key ? nlohmann::json(*m.key) : nlohmann::json(nullptr);
  auto headers = nlohmann::json::parse(m.headers, nullptr, /*allow_exceptions=*/false);
  body["headers"] = headers.is_discarded() ? nlohmann::json::object() : headers;
  body["created_at"] = m.created_at;
  body["check_count"] = m.check_count;
  return body.dump();
}

struct HttpChecker::Client {
  explicit Client(const std::string& scheme_host_port) : client(scheme_host_port) {}
  httplib::Client client;
};

HttpChecker::HttpChecker(std::string url, Millis timeout) : url_(std::move(url)) {
  size_t scheme_end = url_.find("://");
  size_t path_start = url_.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
  path_ = path_start == std::string::npos ? "/" : url_.substr(path_start);
  client_ = std::make_unique<Client>(url_.substr(0, path_start));
  client_->client.set_connection_timeout(timeout);
  client_->client.set_read_timeout(timeout);
  client_->client.set_write_timeout(timeout);
}

HttpChecker::~HttpChecker() = default;

CheckAnswer HttpChecker::Check(const PreparedMessage& message) {
  auto res = client_->client.Post(path_, CheckRequestBody(message), "application/json");
  if (!res) return {Verdict::kUnknown, "POST " + url_ + ": " + httplib::to_string(res.error())};
  return ParseHttpAnswer(res->status, res->body);
}

SqlChecker::SqlChecker(std::string conninfo, std::string query, Millis statement_timeout)
    : conninfo_(std::move(conninfo)),
      query_(std::move(query)),
      statement_timeout_(statement_timeout) {}

Status SqlChecker::Connect() {
  auto c = pg::Connection::Open(conninfo_, "outboxd checker");
  if (!c.ok()) return c.status();
  Status s = c->Exec("SET statement_timeout = " + std::to_string(statement_timeout_.count()));
  if (s.ok()) s = c->Prepare("check", query_, {kInt8Oid, kTextOid, kJsonbOid});
  if (!s.ok()) return s;
  conn_.emplace(std::move(*c));
  return Status::Ok();
}

CheckAnswer SqlChecker::Check(const PreparedMessage& message) {
  if (!conn_ || !conn_->healthy()) {
    conn_.reset();
    if (Status s = Connect(); !s.ok()) return {Verdict::kUnknown, "sql checker: " + s.message()};
  }
  pg::Params p;
  p.Add(message.id);
  if (message.key) {
    p.Add(*message.key);
  } else {
    p.AddNull();
  }
  p.Add(message.headers);
  auto r = conn_->ExecPrepared("check", p);
  if (!r.ok()) return {Verdict::kUnknown, "sql checker: " + r.status().message()};
  if (r->rows() == 0 || r->IsNull(0, 0)) return {Verdict::kUnknown, "sql checker: no answer"};
  std::string word(r->Get(0, 0));
  auto verdict = ParseVerdict(word);
  if (!verdict) {
    return {Verdict::kUnknown,
            "sql checker: expected commit, rollback or unknown, got \"" + Excerpt(word) + "\""};
  }
  return {*verdict, ""};
}

CheckerPtr MakeChecker(const CheckbackConfig& config, const std::string& default_conninfo) {
  switch (config.checker) {
    case CheckerKind::kNone:
      return nullptr;
    case CheckerKind::kHttp:
      return std::make_unique<HttpChecker>(config.http_url, config.http_timeout);
    case CheckerKind::kSql:
      return std::make_unique<SqlChecker>(
          config.sql_conninfo.empty() ? default_conninfo : config.sql_conninfo, config.sql_query,
          config.sql_timeout);
  }
  return nullptr;
}

}  // namespace outboxd
