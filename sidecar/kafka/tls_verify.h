// Clear words for a broker certificate that TLS refuses. librdkafka 2.0.2 reports every refusal
// as "certificate verify failed: broker certificate could not be verified, verify that
// ssl.ca.location is correctly configured ...", also when the CA is right and the certificate
// names another host. This verify callback keeps OpenSSL's verdict unchanged (it accepts exactly
// what OpenSSL accepted) and gives librdkafka OpenSSL's reason for a refusal ("hostname mismatch",
// "unable to get local issuer certificate", "certificate has expired", ...), logged at warning
// once a minute per reason (librdkafka's own line for it, facility SSLCERTVRFY, at debug).
#pragma once

#include <librdkafka/rdkafka.h>

#include <cstddef>
#include <string>

namespace outboxd {

// Installs the callback on `conf` (any client: producer, checkpoint reader). Without TLS it is
// never called.
void InstallCertificateVerifyReasons(rd_kafka_conf_t* conf);

// The text the callback gives for OpenSSL's verification error `x509_error` of the certificate at
// `depth` of the chain presented by `broker` (0: the broker's own certificate).
std::string CertificateRefusal(int x509_error, int depth, const std::string& broker);

}  // namespace outboxd
