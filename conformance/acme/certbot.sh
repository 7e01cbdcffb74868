#!/usr/bin/env bash
# certbot against the gateway's ACME server: register, certonly --standalone (http-01) with
# ECDSA and RSA keys, renew --force-renewal, revoke, --preferred-chain (an alternate chain
# through a cross-certificate), and registration with EAB.
source "$(dirname "$0")/common.sh"
export REQUESTS_CA_BUNDLE=$ROOT_CA
cb() {  # cb <config name> <certbot args...>
  local dir="$WORK/certbot-$1"; shift
  certbot --server "$DIRECTORY_URL" --config-dir "$dir/config" --work-dir "$dir/work" \
    --logs-dir "$dir/logs" --non-interactive "$@"
}
step "certbot register"
run_expect_line "Account registered." cb main register --agree-tos -m ops@example.org
step "certbot certonly --standalone, ECDSA key, two names"
cb main certonly --standalone --http-01-port "$HTTP01_PORT" --key-type ecdsa \
  -d certbot.svc.test -d www.certbot.svc.test
verify_chain "$WORK/certbot-main/config/live/certbot.svc.test/fullchain.pem" certbot.svc.test
run_expect_line "Public Key Algorithm: id-ecPublicKey" openssl x509 -in "$WORK/leaf.pem" -noout \
  -text
step "certbot certonly --standalone, RSA-2048 key"
cb main certonly --standalone --http-01-port "$HTTP01_PORT" --key-type rsa \
  --rsa-key-size 2048 -d rsa.certbot.svc.test
verify_chain "$WORK/certbot-main/config/live/rsa.certbot.svc.test/fullchain.pem" \
  rsa.certbot.svc.test
run_expect_line "Public Key Algorithm: rsaEncryption" openssl x509 -in "$WORK/leaf.pem" -noout \
  -text
step "certbot renew --force-renewal"
before=$(openssl x509 -in "$WORK/certbot-main/config/live/certbot.svc.test/cert.pem" -noout -serial)
run_expect "all renewals succeeded" cb main renew --force-renewal --no-random-sleep-on-renew \
  --http-01-port "$HTTP01_PORT"
after=$(openssl x509 -in "$WORK/certbot-main/config/live/certbot.svc.test/cert.pem" -noout -serial)
[ "$before" != "$after" ] || fail "renew kept the old certificate"
step "certbot revoke"
cb main revoke --cert-name rsa.certbot.svc.test --reason keycompromise \
  --no-delete-after-revoke
live="$WORK/certbot-main/config/live/rsa.certbot.svc.test"
expect_revoked "$live/cert.pem" "$live/chain.pem" keyCompromise
step "certbot --preferred-chain: the alternate chain through a cross-certificate"
cross_certify "Certbot Bridge Root"
cb main certonly --standalone --http-01-port "$HTTP01_PORT" -d chain.certbot.svc.test \
  --preferred-chain "Certbot Bridge Root"
verify_alternate_chain "$WORK/certbot-main/config/live/chain.certbot.svc.test/fullchain.pem" \
  "Certbot Bridge Root"
cb main certonly --standalone --http-01-port "$HTTP01_PORT" -d default.certbot.svc.test
verify_chain "$WORK/certbot-main/config/live/default.certbot.svc.test/fullchain.pem" \
  default.certbot.svc.test
step "certbot register with External Account Binding"
read -r KID HMAC < <(eab_key)
run_expect_line "Account registered." cb eab register --agree-tos -m eab@example.org \
  --eab-kid "$KID" --eab-hmac-key "$HMAC"
cb eab certonly --standalone --http-01-port "$HTTP01_PORT" -d eab.certbot.svc.test
verify_chain "$WORK/certbot-eab/config/live/eab.certbot.svc.test/fullchain.pem" \
  eab.certbot.svc.test
step "the same EAB key cannot bind a second account"
if cb eab2 register --agree-tos -m x@example.org --eab-kid "$KID" --eab-hmac-key "$HMAC" \
    > "$WORK/eab2.log" 2>&1; then fail "a used EAB key bound another account"; fi
grep -qxF "Unable to register an account with ACME server. Error returned by the ACME server:\
 unknown or already used EAB key id" "$WORK/eab2.log" || { cat "$WORK/eab2.log"; fail "error text"; }
grep -qF '"type": "urn:ietf:params:acme:error:unauthorized"' \
  "$WORK"/certbot-eab2/logs/letsencrypt.log || fail "not the unauthorized problem"
echo OK
