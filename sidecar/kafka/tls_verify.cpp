#include "kafka/tls_verify.h"

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>

#include <spdlog/spdlog.h>

namespace outboxd {
namespace {

// Each reason once a minute at most: librdkafka reconnects (and verifies again) every few seconds.
void LogOnce(const std::string& why) {
  static std::mutex mu;
  static std::map<std::string, std::chrono::steady_clock::time_point> last;  // GUARDED_BY(mu)
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard l(mu);
    auto it = last.find(why);
    if (it != last.end() && now - it->second < std::chrono::minutes(1)) return;
    last[why] = now;
  }
  spdlog::warn("kafka: TLS refused the broker's certificate: {}", why);
}

int VerifyWithReason(rd_kafka_t*, const char* broker_name, int32_t, int* x509_error, int depth,
                     const char*, size_t, char* errstr, size_t errstr_size, void*) {
  if (*x509_error == 0) return 1;  // OpenSSL accepted this certificate
  const std::string why = CertificateRefusal(*x509_error, depth, broker_name ? broker_name : "?");
  LogOnce(why);
  if (errstr_size > 0) {
    const size_t n = std::min(why.size(), errstr_size - 1);
    std::memcpy(errstr, why.data(), n);
    errstr[n] = '\0';
  }
  return 0;  // refused, with OpenSSL's error left as it was
}

}  // namespace

std::string CertificateRefusal(int x509_error, int depth, const std::string& broker) {
  std::string why = X509_verify_cert_error_string(x509_error);
  if (x509_error == X509_V_ERR_HOSTNAME_MISMATCH || x509_error == X509_V_ERR_IP_ADDRESS_MISMATCH) {
    why += " (the certificate does not name the host in the broker's address)";
  }
  return why + ": certificate " + std::to_string(depth) + " of the chain presented by " + broker;
}

void InstallCertificateVerifyReasons(rd_kafka_conf_t* conf) {
  // Fails only where librdkafka was built without TLS: then there is nothing to verify.
  (void)rd_kafka_conf_set_ssl_cert_verify_cb(conf, &VerifyWithReason);
}

}  // namespace outboxd
