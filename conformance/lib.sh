# Shared by the OCSP and CRL scripts: settings, helpers, and a certificate issued through
# the REST API with openssl + curl. Sourced, not run; the caller has `set -euo pipefail`.
HTTP_URL=${HTTP_URL:-http://127.0.0.1:8080}
HTTPS_URL=${HTTPS_URL:-https://localhost:8443}
ORG=${ORG:-default}
VCC_PKI=${VCC_PKI_BIN:-vcc-pki}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '== %s\n' "$*"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# grep -q stops reading at the first match: with `set -o pipefail` the writer then dies of
# SIGPIPE and the pipeline fails although the line was there. has reads to the end.
has() { grep "$@" >/dev/null; }
expect() {  # expect <pattern> <output>
  grep -q -- "$1" <<<"$2" || { printf '%s\n' "$2"; fail "expected '$1'"; }
}
expect_line() {  # expect_line <line> <output>: a line that is exactly <line> (outer blanks aside)
  sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<<"$2" | has -xF -- "$1" \
    || { printf '%s\n' "$2"; fail "expected the line '$1'"; }
}
openssl_time() {  # openssl_time <ISO 8601 UTC>: the form openssl prints ("Mar  4 09:26:53 2025 GMT")
  python3 -c 'import datetime as d, sys
t = d.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00")).astimezone(d.timezone.utc)
print(f"{t:%b} {t.day:2d} {t:%H:%M:%S %Y} GMT")' "$1"
}

issue_from_rest() {  # issue_from_rest <dns name>: root.pem, svc.pem, chain.pem, issuing.pem,
                    # $SERIAL, $TOKEN (a cert_manager's)
  step "trust anchor, token, a certificate from the REST API"
  curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
  TOKEN=$("$VCC_PKI" token create --org "$ORG" --role cert_manager 2>/dev/null)
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout svc.key \
    -out svc.csr -subj "/CN=$1" -addext "subjectAltName=DNS:$1" 2>/dev/null
  python3 -c 'import json; print(json.dumps({"csr": open("svc.csr").read(), "profile": "vcc_service", "validity_days": 30}))' > request.json
  curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
    -H "Content-Type: application/json" --data @request.json \
    "$HTTPS_URL/api/v1/certificates" -o issued.json
  json '["certificate_pem"]' < issued.json > svc.pem
  json '["chain_pem"]' < issued.json > chain.pem      # issuing CA, intermediate
  SERIAL=$(json '["serial"]' < issued.json)
  "$VCC_PKI" ca export "$ORG-issuing" > issuing.pem
}
revoked_at() {  # revoked_at <serial>: the stored revocation time (ISO 8601) from the REST API
  curl -fsS --cacert root.pem -H "Authorization: Bearer $TOKEN" \
    "$HTTPS_URL/api/v1/certificates/$1" | json '["revoked_at"]'
}
