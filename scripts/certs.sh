#!/usr/bin/env bash
# Throwaway TLS material for the secured local stack, made with openssl into
# .cache/certs (git-ignored): a CA, a server certificate (SAN IP:127.0.0.1,
# DNS:localhost), a client certificate (CN=outboxd), and a second, untrusted CA
# with its own client certificate for negative tests; and a client certificate for
# PostgreSQL's `cert` authentication (CN=outboxd_cert, the role it logs in as); and a server
# certificate of the right CA for another name (SAN DNS:wrong.example) for host name tests.
#   scripts/certs.sh [ensure]   create, or renew when missing or expiring within 7 days
#   scripts/certs.sh dir        print the folder
# Files: ca.pem ca.key server.pem server.key server-keystore.pem (key + cert, for
# Kafka's PEM keystore) client.pem client.key other-ca.pem other-client.pem other-client.key
# pg-client.pem pg-client.key wrong-name-server.pem wrong-name-keystore.pem
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CERTS="$CACHE/certs"
DAYS=30
RENEW_SECONDS=$((7 * 24 * 3600))

# valid <cert>: exists and does not expire within 7 days
valid() { [[ -s "$1" ]] && openssl x509 -checkend "$RENEW_SECONDS" -noout -in "$1" >/dev/null 2>&1; }

# leaf <name> <ca-prefix> <subject> <ext-file>
leaf() {
  local name=$1 ca=$2 subj=$3 ext=$4
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$name.key" 2>/dev/null
  openssl req -new -key "$T/$name.key" -subj "$subj" -out "$T/$name.csr" 2>/dev/null
  openssl x509 -req -in "$T/$name.csr" -CA "$T/$ca.pem" -CAkey "$T/$ca.key" -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$ext" -out "$T/$name.pem" 2>/dev/null
}

ensure() {
  local f ok=1
  for f in ca server client other-ca other-client pg-client wrong-name-server; do valid "$CERTS/$f.pem" || ok=0; done
  [[ -s "$CERTS/server-keystore.pem" && -s "$CERTS/wrong-name-keystore.pem" ]] || ok=0
  ((ok)) && return 0
  need_cmd openssl "openssl makes the test certificates (package openssl)"
  mkdir -p "$CACHE"
  exec 7>"$CACHE/.certs.lock"
  flock -w 60 7 || die "another certs.sh holds $CACHE/.certs.lock"
  T=$(mktemp -d "$CACHE/certs.tmp.XXXXXX")
  local ca
  for ca in ca other-ca; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$ca.key" 2>/dev/null
    openssl req -x509 -new -key "$T/$ca.key" -sha256 -days "$DAYS" -subj "/CN=outboxd test $ca" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -out "$T/$ca.pem" 2>/dev/null
  done
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$T/server.ext"
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' \
    'extendedKeyUsage=clientAuth' >"$T/client.ext"
  leaf server ca "/CN=localhost" "$T/server.ext"
  leaf client ca "/CN=outboxd" "$T/client.ext"
  leaf other-client other-ca "/CN=outboxd" "$T/client.ext"
  leaf pg-client ca "/CN=outboxd_cert" "$T/client.ext"
  sed 's/^subjectAltName=.*/subjectAltName=DNS:wrong.example/' "$T/server.ext" >"$T/wrong-name.ext"
  leaf wrong-name-server ca "/CN=wrong.example" "$T/wrong-name.ext"
  # Kafka's PEM keystore: an unencrypted PKCS#8 key followed by the certificate.
  for f in server client other-client pg-client wrong-name-server; do
    openssl pkcs8 -topk8 -nocrypt -in "$T/$f.key" -out "$T/$f.key.p8"
    mv "$T/$f.key.p8" "$T/$f.key"
  done
  cat "$T/server.key" "$T/server.pem" >"$T/server-keystore.pem"
  cat "$T/wrong-name-server.key" "$T/wrong-name-server.pem" >"$T/wrong-name-keystore.pem"
  rm -f "$T"/*.csr "$T"/*.ext "$T"/*.srl
  chmod 600 "$T"/*.key "$T/server-keystore.pem" "$T/wrong-name-keystore.pem"
  chmod 700 "$T"
  rm -rf "$CERTS"
  mv "$T" "$CERTS"
  exec 7>&-
  log "new test certificates in $CERTS (valid $DAYS days)"
}

case "${1:-ensure}" in
  ensure) ensure ;;
  dir) echo "$CERTS" ;;
  *) echo "usage: $0 [ensure|dir]" >&2; exit 2 ;;
esac
