"""kagi's AWS-KMS-compatible API through the real AWS SDK for Python (boto3) and the aws CLI,
with only the endpoint URL changed. Env: KAGI_ADDR, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
(policy allowing everything), NARROW_ACCESS_KEY_ID/NARROW_SECRET_ACCESS_KEY (policy allowing
only generate), KAGI_AWS_CLI (the aws command). Prints one line per check; exits 1 on failure."""

import base64
import json
import os
import subprocess
import sys
import tempfile

import boto3
import botocore.exceptions

ENDPOINT = os.environ["KAGI_ADDR"]
REGION = "eu-west-1"
passed = 0


def check(label, cond, detail=""):
    global passed
    if not cond:
        print(f"FAIL {label}: {detail}")
        sys.exit(1)
    passed += 1
    print(f"ok   {label}")


def raises(label, code, fn):
    try:
        fn()
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        check(f"{label} -> {code}", got == code, f"got {got}: {e}")
        return
    check(label, False, f"no exception, expected {code}")


def client(key_id=None, secret=None):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=key_id or os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
    )


kms = client()

# ---- keys and aliases
meta = kms.create_key(Description="sdk test")["KeyMetadata"]
key = meta["KeyId"]
check("CreateKey returns an enabled symmetric key",
      meta["KeyState"] == "Enabled" and meta["KeySpec"] == "SYMMETRIC_DEFAULT"
      and meta["Arn"] == f"arn:aws:kms:{REGION}:000000000000:key/{key}", meta)
key2 = kms.create_key()["KeyMetadata"]["KeyId"]
kms.create_alias(AliasName="alias/sdk-test", TargetKeyId=key)
d = kms.describe_key(KeyId="alias/sdk-test")["KeyMetadata"]
check("DescribeKey by alias names the key", d["KeyId"] == key, d)
raises("CreateAlias twice", "AlreadyExistsException",
       lambda: kms.create_alias(AliasName="alias/sdk-test", TargetKeyId=key2))
aliases = kms.list_aliases()["Aliases"]
check("ListAliases has the alias", any(a["AliasName"] == "alias/sdk-test" and a["TargetKeyId"] == key for a in aliases), aliases)
keys = [k["KeyId"] for k in kms.list_keys()["Keys"]]
check("ListKeys has both keys", key in keys and key2 in keys, keys)
page = kms.list_keys(Limit=1)
check("ListKeys pages", page["Truncated"] and len(page["Keys"]) == 1 and "NextMarker" in page, page)
raises("DescribeKey of an unknown key", "NotFoundException", lambda: kms.describe_key(KeyId="no-such-key"))
raises("DescribeKey of an unknown alias", "NotFoundException", lambda: kms.describe_key(KeyId="alias/nope"))

# ---- data keys, encryption context
ctx = {"tenant": "acme", "purpose": "sdk"}
dk = kms.generate_data_key(KeyId="alias/sdk-test", KeySpec="AES_256", EncryptionContext=ctx)
check("GenerateDataKey returns 32 plaintext bytes and a blob", len(dk["Plaintext"]) == 32 and len(dk["CiphertextBlob"]) > 32)
check("GenerateDataKey names the key by ARN", dk["KeyId"].endswith(f":key/{key}"), dk["KeyId"])
out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
check("Decrypt returns the data key", out["Plaintext"] == dk["Plaintext"] and out["KeyId"] == dk["KeyId"])
raises("Decrypt with another encryption context", "InvalidCiphertextException",
       lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"tenant": "other"}))
raises("Decrypt without the encryption context", "InvalidCiphertextException",
       lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"]))
raises("Decrypt naming another KeyId", "IncorrectKeyException",
       lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx, KeyId=key2))
raises("Decrypt of garbage", "InvalidCiphertextException", lambda: kms.decrypt(CiphertextBlob=b"\x01" * 40))
n = kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=64)
check("GenerateDataKeyWithoutPlaintext returns no plaintext", "Plaintext" not in n and len(n["CiphertextBlob"]) > 64)
re = kms.re_encrypt(CiphertextBlob=dk["CiphertextBlob"], SourceEncryptionContext=ctx,
                    DestinationKeyId=key2, DestinationEncryptionContext={"tenant": "acme2"})
check("ReEncrypt moves the blob to the destination key",
      re["KeyId"].endswith(key2) and re["SourceKeyId"].endswith(key), re)
back = kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"tenant": "acme2"})
check("the re-encrypted blob decrypts to the same data key", back["Plaintext"] == dk["Plaintext"])
enc = kms.encrypt(KeyId=key, Plaintext=b"secret row", EncryptionContext=ctx)
check("Encrypt/Decrypt round trip", kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == b"secret row")
r = kms.generate_random(NumberOfBytes=24)["Plaintext"]
check("GenerateRandom returns the bytes asked for", len(r) == 24)

# ---- rotation
kms.enable_key_rotation(KeyId=key)
kms.rotate_key_on_demand(KeyId=key)
old = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
check("a blob from before RotateKeyOnDemand still decrypts", old["Plaintext"] == dk["Plaintext"])

# ---- the kill switch through the SDK
kms.disable_key(KeyId=key)
check("DescribeKey after DisableKey says Disabled", kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled")
raises("GenerateDataKey on a disabled key", "DisabledException",
       lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"))
raises("Decrypt under a disabled key", "DisabledException",
       lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx))
try:
    kms.encrypt(KeyId=key, Plaintext=b"x")
    check("the SDK raises its modelled exception class", False, "no exception")
except kms.exceptions.DisabledException:
    check("the SDK raises kms.exceptions.DisabledException", True)
kms.enable_key(KeyId=key)
check("EnableKey brings it back", kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"])
s = kms.schedule_key_deletion(KeyId=key2, PendingWindowInDays=7)
check("ScheduleKeyDeletion -> PendingDeletion", s["KeyState"] == "PendingDeletion" and s["PendingWindowInDays"] == 7, s)
raises("Encrypt with a key pending deletion", "KMSInvalidStateException", lambda: kms.encrypt(KeyId=key2, Plaintext=b"x"))
raises("PendingWindowInDays out of range", "ValidationException",
       lambda: kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=3))
kms.cancel_key_deletion(KeyId=key2)
check("CancelKeyDeletion leaves it Disabled, as AWS", kms.describe_key(KeyId=key2)["KeyMetadata"]["KeyState"] == "Disabled")

# ---- authentication and policy
raises("a wrong secret", "InvalidSignatureException",
       lambda: client(secret="x" * 43).list_keys())
raises("an unknown access key", "UnrecognizedClientException",
       lambda: client(key_id="KAGIAAAAAAAAAAAAAAAA").list_keys())
narrow = client(os.environ["NARROW_ACCESS_KEY_ID"], os.environ["NARROW_SECRET_ACCESS_KEY"])
nd = narrow.generate_data_key(KeyId=key, KeySpec="AES_256")
check("narrow credentials may generate", len(nd["Plaintext"]) == 32)
raises("narrow credentials may not decrypt", "AccessDeniedException",
       lambda: narrow.decrypt(CiphertextBlob=nd["CiphertextBlob"]))

# ---- the aws CLI, endpoint URL only
aws = os.environ.get("KAGI_AWS_CLI", "aws")


def cli(*args, ok=True):
    p = subprocess.run([aws, "--endpoint-url", ENDPOINT, "--region", REGION, "--output", "json", "kms", *args],
                       capture_output=True, text=True)
    if ok and p.returncode != 0:
        check(f"aws kms {args[0]}", False, p.stderr)
    return p


ck = json.loads(cli("create-key", "--description", "cli").stdout)["KeyMetadata"]["KeyId"]
check("aws kms create-key", len(ck) == 36)
g = json.loads(cli("generate-data-key", "--key-id", ck, "--key-spec", "AES_256",
                   "--encryption-context", "app=cli").stdout)
with tempfile.TemporaryDirectory() as t:
    blob = os.path.join(t, "blob")
    with open(blob, "wb") as f:
        f.write(base64.b64decode(g["CiphertextBlob"]))
    dec = json.loads(cli("decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context", "app=cli").stdout)
    check("aws kms generate-data-key then decrypt", dec["Plaintext"] == g["Plaintext"])
    rc = json.loads(cli("re-encrypt", "--ciphertext-blob", f"fileb://{blob}", "--source-encryption-context", "app=cli",
                        "--destination-key-id", key).stdout)
    check("aws kms re-encrypt", rc["KeyId"].endswith(key))
    cli("disable-key", "--key-id", ck)
    p = cli("decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context", "app=cli", ok=False)
    check("aws kms decrypt after disable-key fails with DisabledException",
          p.returncode != 0 and "DisabledException" in p.stderr, p.stderr)

print(f"aws-sdk: {passed} passed")
