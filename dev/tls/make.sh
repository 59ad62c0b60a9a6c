#!/usr/bin/env bash
# Development-only TLS material for the demo (gateway.toml's [listen.tls]) and README's
# examples: a throw-away CA, a server certificate for localhost, and a client certificate for
# "alice". The private keys are public in this repository: they protect nothing. Regenerate
# with `bash dev/tls/make.sh` (needs openssl); never use them outside a development machine.
set -euo pipefail
cd "$(dirname "$0")"
DAYS=3650
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

ec ca-key.pem
openssl req -x509 -new -key ca-key.pem -days "$DAYS" -subj "/O=claimgate-dev/CN=claimgate development CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem

leaf() { # name subject extensions
  ec "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$DAYS" \
    -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}
leaf localhost "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf alice "/O=claimgate-dev/CN=alice" "subjectAltName=URI:spiffe://claimgate.dev/alice,email:alice@claimgate.dev
extendedKeyUsage=clientAuth"
rm -f ca.srl
echo "written: ca.pem localhost.pem alice.pem (and their keys)"
