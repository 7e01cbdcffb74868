#!/usr/bin/env bash
# SCEP (RFC 8894) with certmonger against a running gateway: its scep-submit helper for
# GetCACaps and GetCACert, then a full enrollment by the certmonger daemon (on a private
# D-Bus session bus, its state in a temporary directory), checked with openssl; then the
# same on an endpoint with manual approval: PENDING (certmonger waits in CA_WORKING), the
# operator approves, `getcert refresh` makes certmonger poll, and it gets the certificate.
#
#   HTTP_URL=http://127.0.0.1:8080 conformance/scep_certmonger.sh
#
# Needs: certmonger (/usr/lib/certmonger/scep-submit, getcert), dbus-run-session, openssl,
# curl, `vcc-pki` on PATH (or VCC_PKI_BIN). Env: HTTP_URL, ORG (default default).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SCEP_URL="$HTTP_URL/scep"
SUBMIT=/usr/lib/certmonger/scep-submit

step "scep-submit -c (GetCACaps)"
caps=$("$SUBMIT" -u "$SCEP_URL" -c)
expect_line AES "$caps"
expect_line SHA-256 "$caps"

step "scep-submit -C (GetCACert): the RA certificate first, then the CA chain"
"$SUBMIT" -u "$SCEP_URL" -C > cacerts.pem
awk '/BEGIN/{n++} n{print > ("ca" n ".pem")}' cacerts.pem
openssl x509 -in ca1.pem -noout -subject | has "SCEP RA" || fail "the first is not the RA"
cat ca[2-9].pem > chain.pem
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem
openssl verify -CAfile root.pem -untrusted chain.pem ca1.pem >/dev/null

step "certmonger: enroll with a one-time challenge (getcert request -w)"
challenge=$("$VCC_PKI" scep challenge create --org "$ORG" --expires 10m 2>/dev/null)
state="$work/certmonger"
mkdir -p "$state/requests" "$state/cas" "$state/local" "$state/tmp"
cat > getcert.sh <<INNER
getcert add-scep-ca -s -c vcc -u "$SCEP_URL" -r "$work/ca1.pem" -I "$work/chain.pem"
getcert request -s -c vcc -k "$work/device.key" -f "$work/device.pem" -L "$challenge" \
  -N CN=cm-device -w
getcert list -s
INNER
# certmonger -c takes the bus name first, then runs the getcert commands, then exits.
out=$(HOME="$state" XDG_CONFIG_HOME="$state" CERTMONGER_CONFIG_DIR="$state" \
  CERTMONGER_REQUESTS_DIR="$state/requests" CERTMONGER_CAS_DIR="$state/cas" \
  CERTMONGER_LOCAL_CA_DIR="$state/local" CERTMONGER_TMPDIR="$state/tmp" \
  timeout 120 dbus-run-session -- certmonger -s -n -c "bash $work/getcert.sh" 2>&1) \
  || { printf '%s\n' "$out"; fail "certmonger failed"; }
expect "status: MONITORING" "$out"
openssl verify -CAfile root.pem -untrusted chain.pem device.pem
expect "CN = cm-device" "$(openssl x509 -in device.pem -noout -subject)"

step "certmonger: manual approval: PENDING, approve, poll (getcert refresh), MONITORING"
"$VCC_PKI" scep profile set --org "$ORG" --require-approval >/dev/null
challenge=$("$VCC_PKI" scep challenge create --org "$ORG" --expires 10m 2>/dev/null)
state="$work/certmonger-approval"
mkdir -p "$state/requests" "$state/cas" "$state/local" "$state/tmp"
# certmonger runs the script with a bare environment and no standard input: hand it the
# gateway's settings, and give vcc-pki a stdin (uvloop aborts on a closed one).
export -p | grep -E ' (VCC_PKI_[A-Z0-9_]*|SOFTHSM2_CONF)=' > settings.sh
cat > approval.sh <<INNER
source "$work/settings.sh"
has() { grep "\$@" >/dev/null; }  # as in lib.sh: this script runs in a shell of its own
getcert add-scep-ca -s -c vcc -u "$SCEP_URL" -r "$work/ca1.pem" -I "$work/chain.pem"
getcert request -s -c vcc -k "$work/waiting.key" -f "$work/waiting.pem" -L "$challenge" \
  -N CN=cm-waiting -I waiting
for i in \$(seq 300); do
  getcert list -s -i waiting | has "status: CA_WORKING" && break; sleep 0.2
done
getcert list -s -i waiting | grep status:
"$VCC_PKI" scep pending list --org "$ORG" < /dev/null > pending.txt
tid=\$(awk 'NR > 1 && /CN=cm-waiting/ {print \$1}' pending.txt)
echo "pending: \$tid"
"$VCC_PKI" scep pending approve "\$tid" < /dev/null
getcert refresh -s -i waiting
for i in \$(seq 300); do
  getcert list -s -i waiting | has "status: MONITORING" && break; sleep 0.2
done
getcert list -s -i waiting
INNER
out=$(HOME="$state" XDG_CONFIG_HOME="$state" CERTMONGER_CONFIG_DIR="$state" \
  CERTMONGER_REQUESTS_DIR="$state/requests" CERTMONGER_CAS_DIR="$state/cas" \
  CERTMONGER_LOCAL_CA_DIR="$state/local" CERTMONGER_TMPDIR="$state/tmp" \
  timeout 120 dbus-run-session -- certmonger -s -n -c "bash $work/approval.sh" 2>&1) \
  || { printf '%s\n' "$out"; fail "certmonger failed"; }
"$VCC_PKI" scep profile set --org "$ORG" --no-require-approval >/dev/null
expect "status: CA_WORKING" "$out"  # PENDING: certmonger waits for the CA
expect "pending: [0-9A-Za-z]" "$out"
expect "approved: certificate" "$out"
expect "status: MONITORING" "$out"
openssl verify -CAfile root.pem -untrusted chain.pem waiting.pem
expect "CN = cm-waiting" "$(openssl x509 -in waiting.pem -noout -subject)"
echo OK
