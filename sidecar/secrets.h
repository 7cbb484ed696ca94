// Secrets: where passwords come from (the environment through ${VAR}, files such as Kubernetes
// Secret volumes) and the one place that hides them again in everything outboxd prints: log
// lines, error messages, `status` output. The configuration loader reads and registers them;
// main installs the log filter before the first line is logged. Thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace outboxd {

// What a hidden value is replaced with.
inline constexpr std::string_view kRedacted = "[redacted]";

// The contents of a secret file (a Kubernetes Secret key mounted as a file): all of it, less one
// trailing newline ("\n" or "\r\n"). An unreadable or empty file is an error naming the path.
Result<std::string> ReadSecretFile(const std::string& path);

// `conninfo` (libpq key=value or URI) rewritten as key=value with `password` set to `password`,
// replacing any password it had. Invalid if libpq can't parse it.
Result<std::string> ConninfoWithPassword(const std::string& conninfo, const std::string& password);

// The password a libpq conninfo carries ("" if none or if it does not parse).
std::string ConninfoPassword(const std::string& conninfo);

// The password in a URL's user info (http://user:password@host/...), "" if none.
std::string UrlPassword(const std::string& url);

// librdkafka properties whose values are secrets: sasl.password, ssl.key.password,
// ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.client.secret, sasl.oauthbearer.config
// and anything else named like a password or a secret.
bool IsSecretKafkaProperty(std::string_view name);

// Adds values to hide from now on, process-wide. Values shorter than 4 characters are not
// searched for in free text (they would match inside numbers and words); the patterns of Redact()
// still hide them after a password-like key.
void RegisterSecrets(const std::vector<std::string>& values);

// `text` with every registered secret, and every value that looks like one, replaced by
// kRedacted. "Looks like one": the value after a key named like a password or a secret
// (password=..., "sasl.password" = "...", ssl.key.pem: ...) and the password of a URL's user info
// (scheme://user:password@host). The second catches secrets outboxd has not read yet, e.g. in
// the source line a TOML syntax error quotes.
std::string Redact(std::string_view text);
// The same with `extra` values hidden too (the configuration loader, before it registers them).
std::string RedactWith(std::string_view text, const std::vector<std::string>& extra);

// Wraps every sink of spdlog's default logger so each line is Redact()ed before it is written
// (outboxd's own lines, librdkafka's and libpq's). Call once, after InitLogging.
void InstallLogRedaction();

}  // namespace outboxd
