#!/usr/bin/env bash
# Conformance of kagi's XKS proxy API with the AWS KMS External Key Store proxy API spec
# (v1.0.3), from the outside: curl --aws-sigv4 and jq against a running kagi server.
#
# Needs: KAGI (the kagi binary), KAGI_ADDR, KAGI_TOKEN (root), and for mutual TLS
# KAGI_CACERT plus XKS_CERT/XKS_KEY (a client certificate with CN $XKS_SUBJECT),
# XKS_EXPIRED_CERT/KEY (same CA, expired), XKS_SELF_CERT/KEY (self-signed),
# XKS_OTHER_CERT/KEY (same CA, another CN). Prints one line per check and
# "conformance: N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail

: "${KAGI:?}" "${KAGI_ADDR:?}" "${KAGI_TOKEN:?}"
export KAGI_ADDR KAGI_TOKEN
pass=0
failed=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1: $2"; }
k() { "$KAGI" "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tls=()
mtls_subject=()
if [[ -n "${KAGI_CACERT:-}" ]]; then
  tls=(--cacert "$KAGI_CACERT" --cert "$XKS_CERT" --key "$XKS_KEY")
  mtls_subject=(--mtls-subject "$XKS_SUBJECT")
fi

# ---- set-up through kagi's own CLI
k key create conf-k1 >/dev/null
k key rotate conf-k1 >/dev/null # two versions: the metadata names the one used
k key create conf-enc --usage encrypt >/dev/null
k key create conf-dec --usage decrypt >/dev/null
k key create conf-off >/dev/null
k key disable conf-off >/dev/null
k xks add-store conf/store "${mtls_subject[@]}" >/dev/null
cfg=$(k xks config conf/store)
uri=$(jq -r .XksProxyUriPath <<<"$cfg")
AK=$(jq -r .XksProxyAuthenticationCredential.AccessKeyId <<<"$cfg")
SK=$(jq -r .XksProxyAuthenticationCredential.RawSecretAccessKey <<<"$cfg")
[[ "$uri" == /conf/store/kms/xks/v1 ]] && ok "xks config prints XksProxyUriPath $uri" || bad "xks config" "$uri"
[[ ${#AK} -ge 20 && ${#AK} -le 30 && "$AK" =~ ^[A-Z2-7]+$ ]] && ok "access key id has the spec's form" || bad "access key id" "$AK"
[[ ${#SK} -ge 43 && ${#SK} -le 64 && "$SK" =~ ^[A-Za-z0-9+/=]+$ ]] && ok "secret has the spec's form" || bad "secret" "${#SK} chars"
base="$KAGI_ADDR$uri"

# call PATH BODY [AK SK [extra curl args...]] -> CODE, BODY
call() {
  local path=$1 body=$2 ak=${3:-$AK} sk=${4:-$SK}
  shift 4 2>/dev/null || shift $#
  printf '%s' "$body" >"$tmp/body"
  local out
  out=$(curl -sS "${tls[@]}" "$@" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$ak:$sk" \
    -H 'Content-Type: application/json' -X POST --data-binary @"$tmp/body" \
    -w '\n%{http_code}' "$path" 2>"$tmp/err")
  CODE=${out##*$'\n'}
  BODY=${out%$'\n'*}
  [[ "$out" == *$'\n'* ]] || BODY=""
}
# expect_error NAME HTTP ERRORNAME
expect_error() {
  local got
  got=$(jq -r '.errorName // empty' <<<"$BODY" 2>/dev/null)
  if [[ "$CODE" == "$2" && "$got" == "$3" ]]; then ok "$1 -> $2 $3"; else bad "$1" "want $2 $3, got $CODE $BODY"; fi
}

md() { # md OPERATION [principal]
  jq -nc --arg op "$1" --arg p "${2:-arn:aws:iam::111122223333:role/app}" \
    '{awsPrincipalArn: $p, kmsOperation: $op, kmsRequestId: ("conf-" + $op), kmsKeyArn: "arn:aws:kms:us-east-1:111122223333:key/conf"}'
}
enc_body() { # enc_body PLAINTEXT_B64 [AAD_B64]
  jq -nc --argjson md "$(md Encrypt)" --arg pt "$1" --arg aad "${2:-}" \
    '{requestMetadata: $md, plaintext: $pt, encryptionAlgorithm: "AES_GCM", ciphertextDataIntegrityValueAlgorithm: "SHA_256"}
     + (if $aad == "" then {} else {additionalAuthenticatedData: $aad} end)'
}
dec_body() { # dec_body ENCRYPT_RESPONSE [AAD_B64]
  jq -c --argjson md "$(md Decrypt)" --arg aad "${2:-}" \
    '{requestMetadata: $md, encryptionAlgorithm: "AES_GCM", ciphertext, initializationVector, authenticationTag, ciphertextMetadata}
     + (if $aad == "" then {} else {additionalAuthenticatedData: $aad} end)' <<<"$1"
}
b64dec() { base64 -d <<<"$1"; }

# ---- health
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"conf-health"}}'
if [[ "$CODE" == 200 ]] && jq -e '(.xksProxyFleetSize > 0) and (.xksProxyVendor|type=="string") and (.xksProxyModel|type=="string")
    and (.ekmVendor|type=="string") and (.ekmFleetDetails|length>=1 and length<=10)
    and all(.ekmFleetDetails[]; .healthStatus=="ACTIVE" and (.id|type=="string") and (.model|type=="string"))' <<<"$BODY" >/dev/null; then
  ok "health -> 200 with every required field, ACTIVE"
else bad "health" "$CODE $BODY"; fi

# ---- metadata
call "$base/keys/conf-k1/metadata" "{\"requestMetadata\":$(md DescribeKey)}"
jq -e '.keySpec=="AES_256" and .keyStatus=="ENABLED" and (.keyUsage|sort)==["DECRYPT","ENCRYPT"]' <<<"$BODY" >/dev/null \
  && [[ $CODE == 200 ]] && ok "metadata -> AES_256, ENCRYPT+DECRYPT, ENABLED" || bad "metadata" "$CODE $BODY"
call "$base/keys/conf-off/metadata" "{\"requestMetadata\":$(md DescribeKey)}"
[[ $CODE == 200 && $(jq -r .keyStatus <<<"$BODY") == DISABLED ]] && ok "metadata of a disabled key -> DISABLED" || bad "metadata disabled" "$CODE $BODY"
call "$base/keys/conf-enc/metadata" "{\"requestMetadata\":$(md DescribeKey)}"
[[ $(jq -c .keyUsage <<<"$BODY") == '["ENCRYPT"]' ]] && ok "metadata of an encrypt-only key -> [ENCRYPT]" || bad "metadata encrypt-only" "$BODY"

# ---- round trips
roundtrip() { # roundtrip LABEL PLAINTEXT_B64 AAD_B64
  local label=$1 pt=$2 aad=$3
  call "$base/keys/conf-k1/encrypt" "$(enc_body "$pt" "$aad")"
  if [[ $CODE != 200 ]]; then bad "$label encrypt" "$CODE $BODY"; return; fi
  local e=$BODY
  local ct iv tag md cdiv
  ct=$(jq -r .ciphertext <<<"$e"); iv=$(jq -r .initializationVector <<<"$e")
  tag=$(jq -r .authenticationTag <<<"$e"); md=$(jq -r .ciphertextMetadata <<<"$e")
  cdiv=$(jq -r .ciphertextDataIntegrityValue <<<"$e")
  local ptlen ctlen ivlen taglen mdlen
  ptlen=$(b64dec "$pt" | wc -c); ctlen=$(b64dec "$ct" | wc -c); ivlen=$(b64dec "$iv" | wc -c)
  taglen=$(b64dec "$tag" | wc -c); mdlen=$(b64dec "$md" | wc -c)
  if [[ $ctlen == "$ptlen" && ($ivlen == 12 || $ivlen == 16) && $taglen == 16 && $mdlen -le 20 ]]; then
    ok "$label: ciphertext as long as the plaintext ($ptlen), IV $ivlen, tag 16, metadata $mdlen bytes"
  else bad "$label lengths" "pt $ptlen ct $ctlen iv $ivlen tag $taglen md $mdlen"; fi
  # CDIV = SHA-256(AAD || ciphertextMetadata || IV || ciphertext || tag), computed here.
  { [[ -n "$aad" ]] && b64dec "$aad"; b64dec "$md"; b64dec "$iv"; b64dec "$ct"; b64dec "$tag"; } >"$tmp/cdiv-in"
  local want got
  want=$(sha256sum "$tmp/cdiv-in" | cut -d' ' -f1)
  got=$(b64dec "$cdiv" | od -An -tx1 | tr -d ' \n')
  [[ "$want" == "$got" ]] && ok "$label: CDIV checks on the client side" || bad "$label CDIV" "want $want got $got"
  call "$base/keys/conf-k1/decrypt" "$(dec_body "$e" "$aad")"
  [[ $CODE == 200 && $(jq -r .plaintext <<<"$BODY") == "$pt" ]] && ok "$label: decrypt returns the plaintext" || bad "$label decrypt" "$CODE ${BODY:0:200}"
  LAST_ENC=$e
}
roundtrip "round trip without AAD" "$(printf 'hello xks' | base64 -w0)" ""
roundtrip "round trip with AAD" "$(printf 'hello xks' | base64 -w0)" "$(printf 'aad' | base64 -w0)"
roundtrip "4 KiB plaintext with 8 KiB AAD" "$(head -c 4096 /dev/urandom | base64 -w0)" "$(head -c 8192 /dev/urandom | base64 -w0)"
roundtrip "4,300-byte plaintext" "$(head -c 4300 /dev/urandom | base64 -w0)" ""

# ---- negative cases, each with the spec's errorName and HTTP status
roundtrip "AAD set-up" "$(printf 'x' | base64 -w0)" "$(printf 'right' | base64 -w0)" >/dev/null
call "$base/keys/conf-k1/decrypt" "$(dec_body "$LAST_ENC" "$(printf 'wrong' | base64 -w0)")"
expect_error "decrypt with another AAD" 400 InvalidCiphertextException
call "$base/keys/conf-k1/decrypt" "$(dec_body "$LAST_ENC")"
expect_error "decrypt without the AAD" 400 InvalidCiphertextException
# Version 1 exists too, so only the AAD binding can catch this.
call "$base/keys/conf-k1/decrypt" "$(jq -c '.ciphertextMetadata = (if .ciphertextMetadata == "AQAAAAE=" then "AQAAAAI=" else "AQAAAAE=" end)' <<<"$(dec_body "$LAST_ENC" "$(printf 'right' | base64 -w0)")")"
expect_error "decrypt with tampered ciphertextMetadata" 400 InvalidCiphertextException
call "$base/keys/conf-k1/encrypt" '{"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}'
expect_error "missing requestMetadata" 400 ValidationException
call "$base/keys/conf-k1/encrypt" '{"requestMetadata":{},"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}'
expect_error "empty requestMetadata" 400 ValidationException
call "$base/health" '{}'
expect_error "health without requestMetadata" 400 ValidationException
call "$base/keys/conf-k1/encrypt" "$(jq -c '.encryptionAlgorithm = "AES_CBC"' <<<"$(enc_body aGk=)")"
expect_error "encryptionAlgorithm other than AES_GCM" 400 ValidationException
call "$base/keys/conf-k1/encrypt" "$(enc_body 'not base64!')"
expect_error "plaintext that is not base64" 400 ValidationException
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "KAGIXKSAAAAAAAAAAAAA" "$SK"
expect_error "unknown access key id" 401 AuthenticationFailedException
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$AK" "wrong-secret-wrong-secret-wrong-secret-wrong"
expect_error "wrong secret" 401 AuthenticationFailedException
call "$KAGI_ADDR/no/such/prefix/kms/xks/v1/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}'
expect_error "unknown path prefix" 404 InvalidUriPathException
call "$base/keys/conf-k1/sign" "{\"requestMetadata\":$(md Sign)}"
expect_error "unknown key operation" 404 InvalidUriPathException
call "$base/keys/no-such-key/encrypt" "$(enc_body aGk=)"
expect_error "unknown key" 404 KeyNotFoundException
call "$base/keys/no-such-key/metadata" "{\"requestMetadata\":$(md DescribeKey)}"
expect_error "metadata of an unknown key" 404 KeyNotFoundException
call "$base/keys/conf-dec/encrypt" "$(enc_body aGk=)"
expect_error "encrypt with a decrypt-only key" 400 InvalidKeyUsageException
call "$base/keys/conf-enc/encrypt" "$(enc_body aGk=)"
[[ $CODE == 200 ]] && ok "encrypt with an encrypt-only key -> 200" || bad "encrypt-only encrypt" "$CODE $BODY"
call "$base/keys/conf-enc/decrypt" "$(dec_body "$BODY")"
expect_error "decrypt with an encrypt-only key" 400 InvalidKeyUsageException
call "$base/keys/conf-off/encrypt" "$(enc_body aGk=)"
expect_error "encrypt with a disabled key" 400 InvalidStateException
call "$base/keys/conf-k1/encrypt" "$(enc_body aGk=)"
e=$BODY
k key disable conf-k1 >/dev/null
call "$base/keys/conf-k1/decrypt" "$(dec_body "$e")"
expect_error "decrypt after the key was disabled (kill switch)" 400 InvalidStateException
k key enable conf-k1 >/dev/null
call "$base/keys/conf-k1/decrypt" "$(dec_body "$e")"
[[ $CODE == 200 ]] && ok "decrypt after the key was enabled again -> 200" || bad "re-enabled decrypt" "$CODE $BODY"
k key rotate conf-k1 >/dev/null
call "$base/keys/conf-k1/decrypt" "$(dec_body "$e")"
[[ $CODE == 200 ]] && ok "decrypt of a ciphertext made before rotation -> 200" || bad "decrypt after rotation" "$CODE $BODY"
out=$(curl -sS "${tls[@]}" -o /dev/null -w '%{http_code}' "$base/health")
[[ $out == 405 ]] && ok "GET on an API URI -> 405" || bad "GET" "$out"

# ---- two credentials at once: rotation without restart
new=$(k xks rotate-credential conf/store -o json)
AK2=$(jq -r .access_key_id <<<"$new"); SK2=$(jq -r .secret_access_key <<<"$new")
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$AK2" "$SK2"
[[ $CODE == 200 ]] && ok "the new credential works at once" || bad "new credential" "$CODE $BODY"
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}'
[[ $CODE == 200 ]] && ok "the previous credential still works" || bad "previous credential" "$CODE $BODY"
k xks rotate-credential conf/store >/dev/null
call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}'
expect_error "the credential before the previous one is retired" 401 AuthenticationFailedException

# ---- secondary authorization on requestMetadata, by kagi policy
cat >"$tmp/pol.toml" <<'EOF'
[[rule]]
effect = "allow"
keys = ["conf-*"]
operations = ["encrypt", "decrypt", "describe"]
[rule.when]
context = { "xks:awsPrincipalArn" = "arn:aws:iam::111122223333:role/allowed-*" }
EOF
k policy write conf-xks-authz "$tmp/pol.toml" >/dev/null
k xks add-store conf/authz --policy conf-xks-authz "${mtls_subject[@]}" >/dev/null
acfg=$(k xks config conf/authz)
AAK=$(jq -r .XksProxyAuthenticationCredential.AccessKeyId <<<"$acfg")
ASK=$(jq -r .XksProxyAuthenticationCredential.RawSecretAccessKey <<<"$acfg")
abase="$KAGI_ADDR/conf/authz/kms/xks/v1"
body=$(jq -nc --argjson md "$(md Encrypt arn:aws:iam::111122223333:role/allowed-app)" '{requestMetadata: $md, plaintext: "aGk=", encryptionAlgorithm: "AES_GCM"}')
call "$abase/keys/conf-k1/encrypt" "$body" "$AAK" "$ASK"
[[ $CODE == 200 ]] && ok "policy allows the principal it names" || bad "authz allow" "$CODE $BODY"
body=$(jq -nc --argjson md "$(md Encrypt arn:aws:iam::111122223333:role/other)" '{requestMetadata: $md, plaintext: "aGk=", encryptionAlgorithm: "AES_GCM"}')
call "$abase/keys/conf-k1/encrypt" "$body" "$AAK" "$ASK"
expect_error "policy refuses another principal" 403 AccessDeniedException
call "$abase/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$AAK" "$ASK"
[[ $CODE == 200 ]] && ok "health is outside secondary authorization" || bad "authz health" "$CODE $BODY"
if k audit export --format jsonl | jq -s -e 'any(.[]; .request_id == "conf-Encrypt" and .outcome == "denied"
      and .context["xks:awsPrincipalArn"] == "arn:aws:iam::111122223333:role/other"
      and ((.reason // "") | test("denied")))' >/dev/null; then
  ok "the refusal is on the audit log with kmsRequestId, principal ARN and reason"
else bad "audit of the refusal" "no matching record"; fi

# ---- per-prefix throttling
k xks add-store conf/slow --max-rps 1 "${mtls_subject[@]}" >/dev/null
scfg=$(k xks config conf/slow)
SAK=$(jq -r .XksProxyAuthenticationCredential.AccessKeyId <<<"$scfg")
SSK=$(jq -r .XksProxyAuthenticationCredential.RawSecretAccessKey <<<"$scfg")
throttled=0
for _ in $(seq 1 20); do
  call "$KAGI_ADDR/conf/slow/kms/xks/v1/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$SAK" "$SSK"
  [[ $CODE == 429 && $(jq -r .errorName <<<"$BODY") == ThrottlingException ]] && throttled=$((throttled + 1))
done
[[ $throttled -gt 0 ]] && ok "a store over its quota -> 429 ThrottlingException ($throttled of 20)" || bad "throttling" "none of 20 throttled"

# ---- mutual TLS
if [[ ${#tls[@]} -gt 0 ]]; then
  mtls() { # mtls LABEL CERT KEY
    local code
    code=$(curl -sS --cacert "$KAGI_CACERT" --cert "$2" --key "$3" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" \
      --user "$AK2:$SK2" -H 'Content-Type: application/json' -X POST \
      -d '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' \
      -o /dev/null -w '%{http_code}' "$base/health" 2>/dev/null)
    [[ "$code" == 000 ]] && ok "$1: TLS handshake refused" || bad "$1" "HTTP $code"
  }
  mtls "expired client certificate" "$XKS_EXPIRED_CERT" "$XKS_EXPIRED_KEY"
  mtls "self-signed client certificate" "$XKS_SELF_CERT" "$XKS_SELF_KEY"
  call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$AK2" "$SK2"
  [[ $CODE == 200 ]] && ok "client certificate with the configured subject -> 200" || bad "mtls subject" "$CODE $BODY"
  call "$base/health" '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' "$AK2" "$SK2" \
    --cert "$XKS_OTHER_CERT" --key "$XKS_OTHER_KEY"
  expect_error "client certificate with another subject" 401 AuthenticationFailedException
  code=$(curl -sS --cacert "$KAGI_CACERT" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AK2:$SK2" \
    -H 'Content-Type: application/json' -X POST -d '{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"x"}}' \
    -w '\n%{http_code}' "$base/health" 2>/dev/null)
  [[ ${code##*$'\n'} == 401 ]] && ok "no client certificate for a store that requires one -> 401" || bad "no client cert" "$code"
fi

echo "conformance: $pass passed, $failed failed"
[[ $failed == 0 ]]
