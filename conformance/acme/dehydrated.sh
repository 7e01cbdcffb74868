#!/usr/bin/env bash
# dehydrated against the gateway's ACME server: register, http-01 (a small web server
# serves its WELLKNOWN directory), issue, revoke. dehydrated trusts CURL_CA_BUNDLE.
source "$(dirname "$0")/common.sh"
export CURL_CA_BUNDLE=$ROOT_CA
base="$WORK/dehydrated"
mkdir -p "$base/www/.well-known/acme-challenge"
cat > "$base/config" <<CONFIG
CA="$DIRECTORY_URL"
CHALLENGETYPE="http-01"
WELLKNOWN="$base/www/.well-known/acme-challenge"
BASEDIR="$base"
CERTDIR="$base/certs"
KEY_ALGO=prime256v1
CONTACT_EMAIL="dehydrated@example.org"
CONFIG
python3 -m http.server "$HTTP01_PORT" --bind 127.0.0.1 --directory "$base/www" \
  > "$base/http.log" 2>&1 &
web=$!
trap 'kill $web 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$HTTP01_PORT/" && break
  sleep 0.05
done
step "dehydrated --register"
run_expect_line "+ Done!" dehydrated --config "$base/config" --register --accept-terms
grep -qF '"status": "valid"' "$base"/accounts/*/registration_info.json \
  || fail "the server did not answer with a valid account"
step "dehydrated --cron (http-01)"
dehydrated --config "$base/config" --cron --domain dehydrated.svc.test
verify_chain "$base/certs/dehydrated.svc.test/fullchain.pem" dehydrated.svc.test
step "dehydrated --revoke"
# dehydrated renames what it revoked: check copies.
cp "$base/certs/dehydrated.svc.test/cert.pem" "$WORK/dehydrated-cert.pem"
cp "$base/certs/dehydrated.svc.test/chain.pem" "$WORK/dehydrated-chain.pem"
dehydrated --config "$base/config" --revoke "$base/certs/dehydrated.svc.test/cert.pem"
expect_revoked "$WORK/dehydrated-cert.pem" "$WORK/dehydrated-chain.pem" ""
echo OK
