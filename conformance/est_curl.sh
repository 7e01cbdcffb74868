#!/usr/bin/env bash
# EST (RFC 7030, RFC 8951) with curl and openssl against `vcc-pki serve`: every endpoint,
# labels, wrapped and unwrapped base64, Basic and client-certificate authentication, re-key
# (superseding on a --supersede label), serverkeygen, the 202 flow, channel binding with
# tls-unique over TLS 1.2 and tls-exporter over TLS 1.3 (openssl s_client), and each kind
# of bad input (an untrusted or expired client certificate too) refused with a plain-text
# 4xx while nothing is issued.
# Run by conformance/test_est_curl.py; needs VCC_PKI_EST_TRUSTED_PROXIES=127.0.0.2 and
# VCC_PKI_EST_TRUST_STORE=$MFG_DIR/mfg-ca.pem (a manufacturer CA this script creates).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

EST_URL=${EST_URL:-https://localhost:8444}
EST="$EST_URL/.well-known/est"
EST_PORT=${EST_URL##*:}
HTTPS_PORT=${HTTPS_URL##*:}
MFG_DIR=${MFG_DIR:?the directory holding mfg-ca.pem and mfg-ca.key}
curl -fsS "$HTTP_URL/ca/root.pem" -o root.pem

audit_count() { "$VCC_PKI" audit verify | sed -n 's/^audit log intact: \([0-9]*\) entries.*/\1/p'; }
secret() {  # secret [create options]: $USER_ and $PASS_ of a new one-time secret
  local out
  out=$("$VCC_PKI" est secret create --org "$ORG" "$@" 2>/dev/null)
  USER_=$(printf '%s\n' "$out" | awk '$1 == "user" {print $2}')
  PASS_=$(printf '%s\n' "$out" | awk '$1 == "password" {print $2}')
  [ -n "$USER_" ] && [ -n "$PASS_" ] || fail "no secret in: $out"
}
csr() {  # csr <name> <cn> [key file]: <name>.key (new unless given), <name>.der,
         # <name>.b64 (base64 on one line without a trailing newline)
  local key=${3:-$1.key}
  [ -f "$key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key"
  openssl req -new -key "$key" -subj "/CN=$2" -addext "subjectAltName=DNS:$2" \
    -outform DER -out "$1.der"
  base64 -w0 "$1.der" > "$1.b64"
}
est() {  # est <status> <out> [curl args...]: one request; its HTTP status must be exactly <status>
  local want=$1 out=$2 got; shift 2
  got=$(curl -sS --cacert root.pem -o "$out" -D "$out.headers" -w '%{http_code}' "$@") || true
  [ "$got" = "$want" ] || { cat "$out" 2>/dev/null || true; fail "expected HTTP $want, got $got: $*"; }
}
header() {  # header <name> <headers file>: the value (without CR)
  sed -n "s/^$1: //Ip" "$2" | tr -d '\r'
}
refused() {  # refused <status> <reason> [curl args...]: a plain-text 4xx whose text is exactly
             # <reason>, and the audit log (every issuance and secret use is in it) unchanged
  local want=$1 reason=$2 before; shift 2
  before=$(audit_count)
  est "$want" refused.txt "$@"
  [ "$(header Content-Type refused.txt.headers)" = "text/plain; charset=utf-8" ] \
    || fail "HTTP $want is not plain text: $(cat refused.txt.headers)"
  [ "$(cat refused.txt)" = "$reason" ] || fail "expected the reason '$reason', got '$(cat refused.txt)'"
  [ "$(audit_count)" = "$before" ] || fail "HTTP $want changed the audit log: $*"
}
pem_of() {  # pem_of <certs-only base64> <out.pem>
  openssl base64 -d -in "$1" | openssl pkcs7 -inform DER -print_certs -out "$2"
}
same_key() {  # same_key <cert.pem> <key.pem>
  [ "$(openssl x509 -in "$1" -noout -pubkey)" = "$(openssl pkey -in "$2" -pubout)" ] \
    || fail "$1 does not certify $2"
}
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
POST=(-H "Content-Type: application/pkcs10")

step "TLS: 8443 never asks for a client certificate, the EST port does"
msgs=$(openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername localhost -msg </dev/null 2>&1)
[ "$(printf '%s\n' "$msgs" | grep -c 'CertificateRequest' || true)" = 0 ] \
  || fail "the HTTPS listener sent a CertificateRequest"
msgs=$(openssl s_client -connect "127.0.0.1:$EST_PORT" -servername localhost -msg </dev/null 2>&1)
expect '<<< TLS 1.3, Handshake \[length [0-9a-f]*\], CertificateRequest' "$msgs"

step "cacerts: certs-only, 64-column base64, read by openssl pkcs7 -print_certs"
est 200 cacerts.b64 "$EST/cacerts"
[ "$(header Content-Type cacerts.b64.headers)" = "application/pkcs7-mime; smime-type=certs-only" ]
[ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' cacerts.b64)" = 64 ]
pem_of cacerts.b64 cacerts.pem
"$VCC_PKI" ca export "$ORG-issuing" > issuing.pem
[ "$(grep -c 'BEGIN CERTIFICATE' cacerts.pem)" = 3 ]     # issuing CA, intermediate, root
expect_line "issuing.pem: OK" "$(openssl verify -CAfile root.pem -untrusted cacerts.pem issuing.pem)"
grep -qF "$(sed -n 2p root.pem)" cacerts.pem || fail "cacerts lacks the root"

step "csrattrs through openssl asn1parse"
est 200 attrs.b64 "$EST/csrattrs"
[ "$(header Content-Type attrs.b64.headers)" = "application/csrattrs" ]
attrs=$(openssl base64 -d -in attrs.b64 | openssl asn1parse -inform DER)
# CsrAttrs: the key type as an Attribute (id-ecPublicKey with its curve, RFC 7030 4.5.2),
# a subjectAltName in extensionRequest, the signature algorithm; in that order
[ "$(printf '%s\n' "$attrs" | sed -n 's/.*prim: OBJECT *://p' | paste -sd '|')" \
  = "id-ecPublicKey|prime256v1|Extension Request|X509v3 Subject Alternative Name|ecdsa-with-SHA256" ] \
  || fail "unexpected csrattrs: $attrs"

step "simpleenroll with Basic: one-line base64 without a trailing newline, no Content-Transfer-Encoding"
secret --subject CN=dev1.example.test
csr dev1 dev1.example.test
est 200 dev1.b64.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @dev1.b64 "$EST/simpleenroll"
[ "$(header Content-Type dev1.b64.out.headers)" = "application/pkcs7-mime; smime-type=certs-only" ]
pem_of dev1.b64.out dev1.pem
[ "$(grep -c 'BEGIN CERTIFICATE' dev1.pem)" = 1 ]       # RFC 7030 4.2.3: the certificate only
expect_line "subject=O = Default Organization, CN = dev1.example.test" "$(openssl x509 -in dev1.pem -noout -subject)"
expect_line "dev1.pem: OK" "$(openssl verify -CAfile root.pem -untrusted cacerts.pem dev1.pem)"
same_key dev1.pem dev1.key

step "the same secret again: 401 with a Basic challenge, nothing issued"
refused 401 "the enrollment secret was used already" \
  "${POST[@]}" --user "$USER_:$PASS_" --data-binary @dev1.b64 "$EST/simpleenroll"
[ "$(header WWW-Authenticate refused.txt.headers)" = 'Basic realm="vcc-pki EST"' ]

step "simpleenroll: 64-column base64 with Content-Transfer-Encoding: base64"
secret
csr dev2 dev2.example.test
openssl base64 -in dev2.der -out dev2.wrapped                # 64-column lines
[ "$(wc -l < dev2.wrapped)" -gt 1 ]
est 200 dev2.b64.out "${POST[@]}" -H "Content-Transfer-Encoding: base64" \
  --user "$USER_:$PASS_" --data-binary @dev2.wrapped "$EST/simpleenroll"
pem_of dev2.b64.out dev2.pem
expect_line "subject=O = Default Organization, CN = dev2.example.test" "$(openssl x509 -in dev2.pem -noout -subject)"

step "simplereenroll with the issued certificate as TLS client certificate (same key)"
csr dev1r dev1.example.test dev1.key
est 200 dev1r.out "${POST[@]}" --cert dev1.pem --key dev1.key --data-binary @dev1r.b64 \
  "$EST/simplereenroll"
pem_of dev1r.out dev1r.pem
expect_line "subject=O = Default Organization, CN = dev1.example.test" "$(openssl x509 -in dev1r.pem -noout -subject)"
same_key dev1r.pem dev1.key
[ "$(serial_of dev1r.pem)" != "$(serial_of dev1.pem)" ]

step "simplereenroll with a re-key (a new key, the same subject)"
csr dev1k dev1.example.test
est 200 dev1k.out "${POST[@]}" --cert dev1r.pem --key dev1.key --data-binary @dev1k.b64 \
  "$EST/simplereenroll"
pem_of dev1k.out dev1k.pem
same_key dev1k.pem dev1k.key
expect_line "dev1k.pem: OK" "$(openssl verify -CAfile root.pem -untrusted cacerts.pem dev1k.pem)"

step "simplereenroll with a re-key on a --supersede label: the old certificate is revoked (superseded)"
"$VCC_PKI" est label set rekey --org "$ORG" --profile vcc_service --supersede >/dev/null
secret --label rekey
csr sup sup.example.test
est 200 sup.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @sup.b64 "$EST/rekey/simpleenroll"
pem_of sup.out sup.pem
csr supk sup.example.test
est 200 supk.out "${POST[@]}" --cert sup.pem --key sup.key --data-binary @supk.b64 \
  "$EST/rekey/simplereenroll"
pem_of supk.out supk.pem
same_key supk.pem supk.key
ocsp_status() {  # ocsp_status <cert.pem>: what openssl ocsp says of it (from the revoking process at once)
  openssl ocsp -issuer issuing.pem -cert "$1" -url "$HTTP_URL/ocsp" -CAfile root.pem \
    -verify_other cacerts.pem 2>&1 || true
}
# At once from the process that revoked it; another serving process (VCC_PKI_WORKERS)
# learns of it from the store within VCC_PKI_REVOCATION_POLL_MS (500 ms): poll briefly.
for _ in $(seq 1 50); do
  sup_ocsp=$(ocsp_status sup.pem)
  has "sup.pem: revoked" <<<"$sup_ocsp" && break
  sleep 0.1  # polling interval
done
expect "sup.pem: revoked" "$sup_ocsp"
expect "Reason: superseded" "$sup_ocsp"
expect "supk.pem: good" "$(ocsp_status supk.pem)"
# ... and the next CRL (an audit event of its own: wait for it before counting)
for _ in $(seq 1 100); do
  curl -fsS "$HTTP_URL/crl/$ORG-issuing.crl" -o sup.crl \
    && openssl crl -inform DER -in sup.crl -noout -text | has -i "$(serial_of sup.pem)" \
    && break
  sleep 0.1  # polling interval
done
openssl crl -inform DER -in sup.crl -noout -text | grep -A5 -i "$(serial_of sup.pem)" \
  | has "Superseded" || fail "the superseded certificate never reached the CRL"
csr supk2 sup.example.test
refused 401 "the client certificate is revoked" \
  "${POST[@]}" --cert sup.pem --key sup.key --data-binary @supk2.b64 "$EST/rekey/simplereenroll"

step "simplereenroll with another subject: 400, nothing issued"
csr evil other.example.test dev1k.key
refused 400 "the CSR's subject 'CN=other.example.test' differs from the certificate being renewed ('CN=dev1.example.test,O=Default Organization')" \
  "${POST[@]}" --cert dev1k.pem --key dev1k.key --data-binary @evil.b64 "$EST/simplereenroll"

step "simplereenroll with a revoked certificate: 401, nothing issued"
"$VCC_PKI" revoke "$(serial_of dev2.pem)" --reason key_compromise >/dev/null
# The gateway publishes a new CRL (an audit event) shortly after a revocation: wait until
# the CRL lists it, so that the audit count below measures the refused request alone.
for _ in $(seq 1 100); do
  curl -fsS "$HTTP_URL/crl/$ORG-issuing.crl" -o dev2.crl \
    && openssl crl -inform DER -in dev2.crl -noout -text | has -i "$(serial_of dev2.pem)" \
    && break
  sleep 0.1  # polling interval
done
openssl crl -inform DER -in dev2.crl -noout -text | has -i "$(serial_of dev2.pem)" \
  || fail "the revocation never reached the CRL"
csr dev2r dev2.example.test dev2.key
refused 401 "the client certificate is revoked" \
  "${POST[@]}" --cert dev2.pem --key dev2.key --data-binary @dev2r.b64 "$EST/simplereenroll"

step "serverkeygen: multipart/mixed, the key part application/pkcs8 (openssl pkey), the certificate certs-only"
secret
csr kg kg.example.test
est 200 kg.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @kg.b64 "$EST/serverkeygen"
boundary=$(header Content-Type kg.out.headers | sed -n 's/^multipart\/mixed; boundary=\(.*\)$/\1/p')
[ -n "$boundary" ] || fail "not multipart/mixed: $(cat kg.out.headers)"
awk -v b="--$boundary" '{ sub(/\r$/, "") }
  $0 == b || $0 == b "--" { n++; head = 1; next }
  head && $0 == "" { head = 0; next }
  { print > ("part" n (head ? ".headers" : ".b64")) }' kg.out
expect_line "Content-Type: application/pkcs8" "$(cat part1.headers)"
expect_line "Content-Type: application/pkcs7-mime; smime-type=certs-only" "$(cat part2.headers)"
openssl base64 -d -in part1.b64 | openssl pkey -inform DER -out kg.server.key
expect_line "Private-Key: (256 bit)" "$(openssl pkey -in kg.server.key -noout -text | head -1)"
pem_of part2.b64 kg.pem
same_key kg.pem kg.server.key
expect_line "subject=O = Default Organization, CN = kg.example.test" "$(openssl x509 -in kg.pem -noout -subject)"

step "labels: /.well-known/est/routers/ maps to its own profile; an unknown label is 404"
"$VCC_PKI" est label set routers --org "$ORG" --profile mtls_service >/dev/null
est 200 routers-ca.b64 "$EST/routers/cacerts"
secret --label routers
csr rt1 rt1.example.test
est 200 rt1.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @rt1.b64 "$EST/routers/simpleenroll"
pem_of rt1.out rt1.pem
same_key rt1.pem rt1.key
secret
refused 404 "no EST label 'nope'" \
  "${POST[@]}" --user "$USER_:$PASS_" --data-binary @rt1.b64 "$EST/nope/simpleenroll"

step "manual approval: 202 with Retry-After, approve, the same request gets the certificate"
"$VCC_PKI" est label set gated --org "$ORG" --profile vcc_service --require-approval >/dev/null
secret --label gated
csr gate1 gate1.example.test
est 202 gate1.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @gate1.b64 "$EST/gated/simpleenroll"
[ "$(header Retry-After gate1.out.headers)" = 60 ]
request_id=$("$VCC_PKI" est pending list | awk 'NR > 1 && $2 == "gated" {print $1}')
[ -n "$request_id" ] || fail "no pending request"
est 202 gate1.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @gate1.b64 "$EST/gated/simpleenroll"
expect "approved: certificate" "$("$VCC_PKI" est pending approve "$request_id")"
est 200 gate1.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @gate1.b64 "$EST/gated/simpleenroll"
pem_of gate1.out gate1.pem
same_key gate1.pem gate1.key

step "TLS 1.2: cacerts and enroll with curl --tls-max 1.2"
est 200 cacerts12.b64 --tls-max 1.2 "$EST/cacerts"
secret
csr t12 t12.example.test
est 200 t12.out --tls-max 1.2 "${POST[@]}" --user "$USER_:$PASS_" --data-binary @t12.b64 \
  "$EST/simpleenroll"
pem_of t12.out t12.pem
same_key t12.pem t12.key

step "channel binding (RFC 7030 3.5): tls-unique of this TLS 1.2 session in challengePassword"
"$VCC_PKI" est label set bound --org "$ORG" --profile vcc_service --require-channel-binding >/dev/null
bound_enroll() {  # bound_enroll <name> <cn> <user> <pass> [tls-unique override]: one s_client
                  # session; the CSR is made once its Finished is known; the response in <name>.http
  local name=$1 cn=$2 user=$3 pass=$4 forced=${5:-}
  rm -f "$name.fifo" "$name.msgs"; mkfifo "$name.fifo"
  openssl s_client -connect "127.0.0.1:$EST_PORT" -servername localhost -CAfile root.pem \
    -tls1_2 -quiet -msg -msgfile "$name.msgs" < "$name.fifo" > "$name.http" 2>/dev/null &
  local client=$!
  exec 7> "$name.fifo"
  local finished=""
  for _ in $(seq 200); do  # poll for the client's Finished (tls-unique of a full handshake)
    finished=$(awk '/^>>> TLS 1.2, Handshake \[length 0010\], Finished/ { getline; print; exit }' \
      "$name.msgs" 2>/dev/null || true)
    [ -n "$finished" ] && break
    sleep 0.05
  done
  [ -n "$finished" ] || fail "no TLS 1.2 Finished seen"
  local binding
  # "14 00 00 0c" (Finished, 12 bytes) then verify_data: the 12 bytes of tls-unique
  # shellcheck disable=SC2059  # the format is the \x escapes of the bytes
  binding=$(printf "$(printf '%s\n' "$finished" \
    | awk '{ for (i = 5; i <= 16; i++) printf "\\x%s", $i }')" | base64 -w0)
  [ -n "$forced" ] && binding=$forced
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
  printf '[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n[dn]\nCN = %s\n[attrs]\nchallengePassword = %s\n' \
    "$cn" "$binding" > "$name.cnf"
  openssl req -new -key "$name.key" -config "$name.cnf" -addext "subjectAltName=DNS:$cn" \
    -outform DER | base64 -w0 > "$name.b64"
  local auth
  auth=$(printf '%s:%s' "$user" "$pass" | base64 -w0)
  {
    printf 'POST /.well-known/est/bound/simpleenroll HTTP/1.1\r\nHost: localhost\r\n'
    printf 'Authorization: Basic %s\r\nContent-Type: application/pkcs10\r\n' "$auth"
    printf 'Content-Length: %s\r\nConnection: close\r\n\r\n' "$(wc -c < "$name.b64")"
    cat "$name.b64"
  } >&7
  exec 7>&-
  wait "$client" || true
}
secret --label bound
bound_enroll cb1 cb1.example.test "$USER_" "$PASS_"
[ "$(head -1 cb1.http | tr -d "\r")" = "HTTP/1.1 200 OK" ] || fail "$(cat cb1.http)"
sed '1,/^\r$/d' cb1.http > cb1.out
pem_of cb1.out cb1.pem
same_key cb1.pem cb1.key
before=$(audit_count)
secret --label bound
bound_enroll cb2 cb2.example.test "$USER_" "$PASS_" "AAAAAAAAAAAAAAAA"
expect_line "HTTP/1.1 400 Bad Request" "$(head -1 cb2.http | tr -d '\r')"
expect_line "the CSR's challengePassword is not this TLS session's tls-unique value (RFC 7030 3.5)" \
  "$(sed '1,/^\r$/d' cb2.http)"
[ "$(audit_count)" = "$((before + 1))" ] || fail "a refused binding changed more than the secret's creation"
csr cb3 cb3.example.test
refused 400 "this label requires channel binding: the CSR's challengePassword must hold base64 of the TLS session's tls-exporter (RFC 9266) value (RFC 7030 3.5)" \
  --tlsv1.3 "${POST[@]}" --user "$USER_:$PASS_" --data-binary @cb3.b64 "$EST/bound/simpleenroll"

step "channel binding on TLS 1.3: RFC 9266 tls-exporter (openssl s_client -keymatexport)"
bound_enroll13() {  # bound_enroll13 <name> <cn> <user> <pass> [override]: as bound_enroll,
                    # the binding the exporter value s_client prints for this session
  local name=$1 cn=$2 user=$3 pass=$4 forced=${5:-}
  rm -f "$name.fifo"; mkfifo "$name.fifo"
  openssl s_client -connect "127.0.0.1:$EST_PORT" -servername localhost -CAfile root.pem \
    -tls1_3 -ign_eof -nocommands -keymatexport EXPORTER-Channel-Binding -keymatexportlen 32 \
    < "$name.fifo" > "$name.session" 2>/dev/null &
  local client=$!
  exec 7> "$name.fifo"
  local material=""
  for _ in $(seq 200); do  # poll for the session summary s_client prints after the handshake
    material=$(sed -n 's/^ *Keying material: *\([0-9A-Fa-f]*\)$/\1/p' "$name.session" 2>/dev/null || true)
    [ -n "$material" ] && break
    sleep 0.05
  done
  [ ${#material} = 64 ] || fail "no 32-byte exporter value from s_client: $(cat "$name.session")"
  local binding
  binding=$(python3 -c 'import base64, sys; print(base64.b64encode(bytes.fromhex(sys.argv[1])).decode())' "$material")
  [ -n "$forced" ] && binding=$forced
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
  printf '[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n[dn]\nCN = %s\n[attrs]\nchallengePassword = %s\n' \
    "$cn" "$binding" > "$name.cnf"
  openssl req -new -key "$name.key" -config "$name.cnf" -addext "subjectAltName=DNS:$cn" \
    -outform DER | base64 -w0 > "$name.b64"
  local auth
  auth=$(printf '%s:%s' "$user" "$pass" | base64 -w0)
  {
    printf 'POST /.well-known/est/bound/simpleenroll HTTP/1.1\r\nHost: localhost\r\n'
    printf 'Authorization: Basic %s\r\nContent-Type: application/pkcs10\r\n' "$auth"
    printf 'Content-Length: %s\r\nConnection: close\r\n\r\n' "$(wc -c < "$name.b64")"
    cat "$name.b64"
  } >&7
  exec 7>&-
  wait "$client" || true
  sed -n '/^HTTP\/1.1 /,$p' "$name.session" > "$name.http"
}
secret --label bound
bound_enroll13 cb4 cb4.example.test "$USER_" "$PASS_"
[ "$(head -1 cb4.http | tr -d "\r")" = "HTTP/1.1 200 OK" ] || fail "$(cat cb4.session)"
sed '1,/^\r$/d' cb4.http > cb4.out
pem_of cb4.out cb4.pem
same_key cb4.pem cb4.key
before=$(audit_count)
secret --label bound
bound_enroll13 cb5 cb5.example.test "$USER_" "$PASS_" "$(head -c 32 /dev/zero | base64 -w0)"
expect_line "HTTP/1.1 400 Bad Request" "$(head -1 cb5.http | tr -d '\r')"
expect_line "the CSR's challengePassword is not this TLS session's tls-exporter (RFC 9266) value (RFC 7030 3.5)" \
  "$(sed '1,/^\r$/d' cb5.http)"
[ "$(audit_count)" = "$((before + 1))" ] || fail "a refused binding changed more than the secret's creation"

step "a manufacturer certificate from the EST trust store enrolls; an untrusted or expired one gets 401 text"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out idev.key
openssl req -new -key idev.key -subj "/CN=idev-0001.example.test" -out idev.csr
# an IDevID is an X.509 v3 certificate (IEEE 802.1AR); the core's path validation wants v3
printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n' > idev.ext
openssl x509 -req -in idev.csr -CA "$MFG_DIR/mfg-ca.pem" -CAkey "$MFG_DIR/mfg-ca.key" \
  -extfile idev.ext -days 30 -out idev.pem 2>/dev/null
csr idevcsr idev-0001.example.test
est 200 idev.out "${POST[@]}" --cert idev.pem --key idev.key --data-binary @idevcsr.b64 \
  "$EST/simpleenroll"
pem_of idev.out idev-issued.pem
same_key idev-issued.pem idevcsr.key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue-ca.key \
  -out rogue-ca.pem -subj "/CN=Rogue CA" -days 30 2>/dev/null
openssl x509 -req -in idev.csr -CA rogue-ca.pem -CAkey rogue-ca.key -extfile idev.ext -days 30 \
  -out rogue.pem 2>/dev/null
"$(dirname "$VCC_PKI")/python" - "$MFG_DIR" <<'EOF'  # expired: openssl x509 cannot back-date
import datetime as dt, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
d = sys.argv[1]
ca = x509.load_pem_x509_certificate(open(f"{d}/mfg-ca.pem", "rb").read())
ca_key = serialization.load_pem_private_key(open(f"{d}/mfg-ca.key", "rb").read(), None)
key = serialization.load_pem_private_key(open("idev.key", "rb").read(), None)
now = dt.datetime.now(dt.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=idev-0001.example.test"))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256()))
open("expired.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
EOF
# The handshake accepts any client certificate; the core refuses these with a reason.
for tls in 1.2 1.3; do
  refused 401 "the client certificate does not chain to a trusted CA (no trusted CA, and no CA in the chain sent, issued it)" \
    --tlsv"$tls" --tls-max "$tls" "${POST[@]}" --cert rogue.pem --key idev.key \
    --data-binary @idevcsr.b64 "$EST/simpleenroll"
  [ "$(header WWW-Authenticate refused.txt.headers)" = 'Basic realm="vcc-pki EST"' ]
  refused 401 "the client certificate is expired or not yet valid" \
    --tlsv"$tls" --tls-max "$tls" "${POST[@]}" --cert expired.pem --key idev.key \
    --data-binary @idevcsr.b64 "$EST/simpleenroll"
done

step "behind a TLS-terminating proxy: X-SSL-Client-Cert only from VCC_PKI_EST_TRUSTED_PROXIES"
escaped() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read()))' "$1"; }
csr px dev1.example.test dev1k.key
est 200 px.out --interface 127.0.0.2 "${POST[@]}" -H "X-SSL-Client-Cert: $(escaped dev1k.pem)" \
  --data-binary @px.b64 "$EST/simplereenroll"
pem_of px.out px.pem
same_key px.pem dev1k.key
refused 403 "X-SSL-Client-Cert is accepted only from a trusted proxy (VCC_PKI_EST_TRUSTED_PROXIES); present the certificate in the TLS handshake" \
  "${POST[@]}" -H "X-SSL-Client-Cert: $(escaped px.pem)" --data-binary @px.b64 "$EST/simplereenroll"
refused 401 "the client certificate does not chain to a trusted CA (no trusted CA, and no CA in the chain sent, issued it)" --interface 127.0.0.2 \
  "${POST[@]}" -H "X-SSL-Client-Cert: $(escaped rogue.pem)" --data-binary @idevcsr.b64 "$EST/simpleenroll"
refused 401 "the client certificate is expired or not yet valid" --interface 127.0.0.2 \
  "${POST[@]}" -H "X-SSL-Client-Cert: $(escaped expired.pem)" --data-binary @idevcsr.b64 "$EST/simpleenroll"

step "bad input: each a plain-text 4xx, nothing issued"
secret
refused 400 "the request body is not base64 (RFC 8951 3.2: the PKCS#10 request in base64, with or without line breaks)" \
  "${POST[@]}" --user "$USER_:$PASS_" --data-binary 'not*base64!' "$EST/simpleenroll"
csr bad bad.example.test
python3 -c 'import sys; d = bytearray(open("bad.der", "rb").read()); d[-1] ^= 1; sys.stdout.write(__import__("base64").b64encode(bytes(d)).decode())' > badsig.b64
refused 400 "the CSR signature does not verify" \
  "${POST[@]}" --user "$USER_:$PASS_" --data-binary @badsig.b64 "$EST/simpleenroll"
refused 415 "send the request as application/pkcs10 (base64), not application/json" \
  -H "Content-Type: application/json" --user "$USER_:$PASS_" --data-binary @bad.b64 "$EST/simpleenroll"
head -c 70000 /dev/zero | base64 -w0 > big.b64
refused 413 "EST requests are at most 65536 bytes" \
  "${POST[@]}" --user "$USER_:$PASS_" --data-binary @big.b64 "$EST/simpleenroll"
refused 401 "authentication required: HTTP Basic with an enrollment secret, or a TLS client certificate" \
  "${POST[@]}" --data-binary @bad.b64 "$EST/simpleenroll"
[ "$(header WWW-Authenticate refused.txt.headers)" = 'Basic realm="vcc-pki EST"' ]
"$VCC_PKI" est secret create --org "$ORG" --expires 1s > expiring.txt 2> expiring.err
until_=$(sed -n 's/^# one use, until \([^,;]*\).*/\1/p' expiring.err)
while [ "$(date -u +%s)" -le "$(date -u -d "$until_" +%s)" ]; do sleep 0.1; done  # poll the clock
refused 401 "the enrollment secret has expired" "${POST[@]}" \
  --user "$(awk '$1 == "user" {print $2}' expiring.txt):$(awk '$1 == "password" {print $2}' expiring.txt)" \
  --data-binary @bad.b64 "$EST/simpleenroll"
# the secret that all of these carried is still good: nothing spent it
est 200 bad.out "${POST[@]}" --user "$USER_:$PASS_" --data-binary @bad.b64 "$EST/simpleenroll"
refused 501 "full CMC (RFC 7030 4.3) is not offered here: use simpleenroll, simplereenroll or serverkeygen" \
  -H "Content-Type: application/pkcs7-mime" --data-binary @bad.b64 "$EST/fullcmc"

echo OK
