"""boto3 (default configuration) over the rest of the S3 surface the gateway serves:
multipart uploads (managed transfer and by hand, including a retried Complete, part copies,
listings and every refusal), copies, batch deletes, conditional requests, checksums (header,
aws-chunked trailer, multipart composite), presigned PUT (SigV2 and SigV4), expired URLs,
ACL/versions answers, key encoding, per-key grants and anonymous reads. Prints a JSON summary
of what happened; the Rust test asserts on it."""
import base64
import datetime
import hashlib
import http.client
import io
import json
import os
import socket
import sys
import tempfile
import urllib.parse
import zlib

import boto3
import botocore
import botocore.auth
import botocore.httpchecksum
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint, access, secret, writer_key, writer_secret = sys.argv[1:6]
MiB = 1 << 20


def client(key=access, sec=secret, **config):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=sec, region_name="us-east-1",
                        config=Config(**config) if config else None)


def code(f, *args, **kwargs):
    try:
        f(*args, **kwargs)
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]


def http_status(url, method="GET", data=None):
    """A bare HTTP request (no Content-Type added: SigV2 signs it)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.netloc, timeout=60)
    conn.request(method, u.path + ("?" + u.query if u.query else ""), body=data)
    r = conn.getresponse()
    return r.status, r.read()


def b64(digest):
    return base64.b64encode(digest).decode()


def reflected_crc(poly, width):
    """A table-driven reflected CRC (init and final XOR all ones): CRC32C and CRC64NVME,
    which botocore computes only with awscrt, checked against an independent implementation."""
    mask = (1 << width) - 1
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)

    def crc(data):
        c = mask
        for b in data:
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        return (c ^ mask).to_bytes(width // 8, "big")
    return crc


crc32c = reflected_crc(0x82F63B78, 32)
crc64nvme = reflected_crc(0x9A6C9329AC4BC9B5, 64)
assert crc32c(b"123456789").hex() == "e3069283"
assert crc64nvme(b"123456789").hex() == "ae8b14860a799888"


s3 = client()
out = {}
_t = [__import__("time").monotonic()]


def section(name):
    now = __import__("time").monotonic()
    print(f"{name}: {now - _t[0]:.1f}s", file=sys.stderr)
    _t[0] = now

s3.create_bucket(Bucket="biometrics")
s3.create_bucket(Bucket="firmware")

# --- Managed multipart transfer (s3transfer, 8 MiB parts, default checksums) -------------
blob = os.urandom(21 * MiB + 12345)
with tempfile.TemporaryDirectory() as d:
    src = os.path.join(d, "scan.bin")
    with open(src, "wb") as f:
        f.write(blob)
    s3.upload_file(src, "biometrics", "big/scan.bin")
    dst = os.path.join(d, "back.bin")
    s3.download_file("biometrics", "big/scan.bin", dst,
                     Config=TransferConfig(multipart_chunksize=5 * MiB))
    out["transfer_roundtrip"] = open(dst, "rb").read() == blob
head = s3.head_object(Bucket="biometrics", Key="big/scan.bin", ChecksumMode="ENABLED")
out["transfer_etag_parts"] = head["ETag"].strip('"').split("-")[-1]
out["transfer_parts_count"] = s3.head_object(Bucket="biometrics", Key="big/scan.bin",
                                             PartNumber=1).get("PartsCount")
out["transfer_checksum_type"] = head.get("ChecksumType")
out["transfer_has_crc32"] = "ChecksumCRC32" in head

section("before Multipart by hand")
# --- Multipart by hand ------------------------------------------------------------------
p1, p2, p3 = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail" * 256
s3.put_object(Bucket="biometrics", Key="copy-source", Body=p2 * 2)
up = s3.create_multipart_upload(Bucket="biometrics", Key="manual", Metadata={"site": "17"},
                                ContentType="application/x-scan")
uid = up["UploadId"]
e1 = s3.upload_part(Bucket="biometrics", Key="manual", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
# Part 2 copied from the second half of another object.
cp = s3.upload_part_copy(Bucket="biometrics", Key="manual", UploadId=uid, PartNumber=2,
                         CopySource={"Bucket": "biometrics", "Key": "copy-source"},
                         CopySourceRange=f"bytes={5 * MiB}-{10 * MiB - 1}")
e2 = cp["CopyPartResult"]["ETag"]
e3 = s3.upload_part(Bucket="biometrics", Key="manual", UploadId=uid, PartNumber=3, Body=p3)["ETag"]
out["part_etag_is_md5"] = e1.strip('"') == hashlib.md5(p1).hexdigest()
parts = s3.list_parts(Bucket="biometrics", Key="manual", UploadId=uid)["Parts"]
out["listed_parts"] = [(p["PartNumber"], p["Size"]) for p in parts]
paged = s3.list_parts(Bucket="biometrics", Key="manual", UploadId=uid, MaxParts=2)
out["parts_page"] = [len(paged["Parts"]), paged["IsTruncated"], paged.get("NextPartNumberMarker")]
uploads = s3.list_multipart_uploads(Bucket="biometrics")["Uploads"]
out["listed_uploads"] = [u["Key"] for u in uploads]
done_parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2},
              {"PartNumber": 3, "ETag": e3}]
out["complete_wrong_order"] = code(s3.complete_multipart_upload, Bucket="biometrics", Key="manual",
                                   UploadId=uid, MultipartUpload={"Parts": done_parts[::-1]})
out["complete_wrong_etag"] = code(
    s3.complete_multipart_upload, Bucket="biometrics", Key="manual", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e3}, done_parts[1], done_parts[2]]})
out["complete_missing_part"] = code(
    s3.complete_multipart_upload, Bucket="biometrics", Key="manual", UploadId=uid,
    MultipartUpload={"Parts": [done_parts[0], {"PartNumber": 7, "ETag": e3}]})
first = s3.complete_multipart_upload(Bucket="biometrics", Key="manual", UploadId=uid,
                                     MultipartUpload={"Parts": done_parts})
again = s3.complete_multipart_upload(Bucket="biometrics", Key="manual", UploadId=uid,
                                     MultipartUpload={"Parts": done_parts})
out["retried_complete_same_etag"] = first["ETag"] == again["ETag"]
expected_etag = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in (e1, e2, e3))).hexdigest() + "-3"
out["multipart_etag"] = first["ETag"].strip('"') == expected_etag
got = s3.get_object(Bucket="biometrics", Key="manual")
out["manual_roundtrip"] = got["Body"].read() == p1 + p2 + p3
out["manual_metadata"] = [got["Metadata"], got["ContentType"]]
out["get_part_2"] = s3.get_object(Bucket="biometrics", Key="manual", PartNumber=2)["Body"].read() == p2
out["list_parts_after_complete"] = code(s3.list_parts, Bucket="biometrics", Key="manual", UploadId=uid)

small = s3.create_multipart_upload(Bucket="biometrics", Key="small")["UploadId"]
s1 = s3.upload_part(Bucket="biometrics", Key="small", UploadId=small, PartNumber=1, Body=b"a" * 1000)["ETag"]
s2 = s3.upload_part(Bucket="biometrics", Key="small", UploadId=small, PartNumber=2, Body=b"b")["ETag"]
out["entity_too_small"] = code(s3.complete_multipart_upload, Bucket="biometrics", Key="small",
                               UploadId=small, MultipartUpload={"Parts": [
                                   {"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]})
out["bad_part_number"] = code(s3.upload_part, Bucket="biometrics", Key="small", UploadId=small,
                              PartNumber=10001, Body=b"x")
s3.abort_multipart_upload(Bucket="biometrics", Key="small", UploadId=small)
out["after_abort"] = code(s3.list_parts, Bucket="biometrics", Key="small", UploadId=small)
out["bogus_upload_id"] = code(s3.upload_part, Bucket="biometrics", Key="small",
                              UploadId="../../buckets", PartNumber=1, Body=b"x")

section("before Copy, batch delete")
# --- Copy, batch delete -----------------------------------------------------------------
s3.put_object(Bucket="biometrics", Key="orig", Body=b"original", Metadata={"a": "1"},
              ContentType="text/plain")
s3.copy_object(Bucket="biometrics", Key="copied", CopySource={"Bucket": "biometrics", "Key": "orig"})
c = s3.get_object(Bucket="biometrics", Key="copied")
out["copy_keeps_metadata"] = [c["Body"].read().decode(), c["Metadata"], c["ContentType"]]
s3.copy_object(Bucket="biometrics", Key="orig", CopySource={"Bucket": "biometrics", "Key": "orig"},
               Metadata={"b": "2"}, MetadataDirective="REPLACE")
out["copy_replaces_metadata"] = s3.head_object(Bucket="biometrics", Key="orig")["Metadata"]
out["copy_to_itself"] = code(s3.copy_object, Bucket="biometrics", Key="orig",
                             CopySource={"Bucket": "biometrics", "Key": "orig"})
out["copy_missing"] = code(s3.copy_object, Bucket="biometrics", Key="x",
                           CopySource={"Bucket": "biometrics", "Key": "nope"})
deleted = s3.delete_objects(Bucket="biometrics", Delete={"Objects": [
    {"Key": "copied"}, {"Key": "copy-source"}, {"Key": "never-existed"}]})
out["batch_deleted"] = sorted(d["Key"] for d in deleted["Deleted"])
out["batch_errors"] = deleted.get("Errors", [])

section("before Conditional requests")
# --- Conditional requests ---------------------------------------------------------------
etag = s3.head_object(Bucket="biometrics", Key="orig")["ETag"]
future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
out["if_none_match_current"] = code(s3.get_object, Bucket="biometrics", Key="orig", IfNoneMatch=etag)
out["if_match_other"] = code(s3.get_object, Bucket="biometrics", Key="orig", IfMatch='"0000"')
out["if_match_current"] = code(s3.get_object, Bucket="biometrics", Key="orig", IfMatch=etag)
out["if_modified_since_future"] = code(s3.get_object, Bucket="biometrics", Key="orig",
                                       IfModifiedSince=future)
out["if_unmodified_since_past"] = code(s3.head_object, Bucket="biometrics", Key="orig",
                                       IfUnmodifiedSince=past)
out["put_if_none_match_existing"] = code(s3.put_object, Bucket="biometrics", Key="orig",
                                         Body=b"x", IfNoneMatch="*")
out["put_if_none_match_new"] = code(s3.put_object, Bucket="biometrics", Key="fresh",
                                    Body=b"x", IfNoneMatch="*")
out["copy_if_match_other"] = code(s3.copy_object, Bucket="biometrics", Key="c2",
                                  CopySource={"Bucket": "biometrics", "Key": "orig"},
                                  CopySourceIfMatch='"0000"')
out["invalid_range"] = code(s3.get_object, Bucket="biometrics", Key="orig", Range="bytes=100-200")

section("before Checksums")
# --- Checksums --------------------------------------------------------------------------
data = b"fingerprint template " * 1000
s3.put_object(Bucket="biometrics", Key="sha", Body=data, ChecksumAlgorithm="SHA256")
h = s3.head_object(Bucket="biometrics", Key="sha", ChecksumMode="ENABLED")
out["sha256_stored"] = h.get("ChecksumSHA256") == b64(hashlib.sha256(data).digest())
crc = b64(zlib.crc32(data).to_bytes(4, "big"))
out["default_crc32_stored"] = s3.put_object(Bucket="biometrics", Key="crc", Body=data).get("ChecksumCRC32") == crc
# botocore retries BadDigest (it may be a network fault); one attempt says what we need.
once = client(retries={"max_attempts": 1})
out["wrong_crc32"] = code(once.put_object, Bucket="biometrics", Key="bad", Body=data,
                          ChecksumCRC32="AAAAAA==")
out["wrong_md5"] = code(once.put_object, Bucket="biometrics", Key="bad", Body=data,
                        ContentMD5=b64(hashlib.md5(b"other").digest()))
out["bad_key_absent"] = code(s3.head_object, Bucket="biometrics", Key="bad")

for alg, value in (("CRC32C", b64(crc32c(data))), ("CRC64NVME", b64(crc64nvme(data))),
                   ("SHA1", b64(hashlib.sha1(data).digest()))):
    s3.put_object(Bucket="biometrics", Key=f"sum-{alg}", Body=data, **{f"Checksum{alg}": value})
    h = s3.head_object(Bucket="biometrics", Key=f"sum-{alg}", ChecksumMode="ENABLED")
    out[f"checksum_{alg.lower()}"] = [h.get(f"Checksum{alg}") == value, h.get("ChecksumType")]
    out[f"wrong_{alg.lower()}"] = code(once.put_object, Bucket="biometrics", Key="bad", Body=data,
                                        **{f"Checksum{alg}": b64(bytes(len(base64.b64decode(value))))})
out["invalid_md5"] = code(once.put_object, Bucket="biometrics", Key="bad", Body=data,
                          ContentMD5="not-an-md5")

# aws-chunked with a trailing checksum: botocore only does this over https, so make its
# decision see https while the request still goes to our plain-http endpoint.
real_urlparse = botocore.httpchecksum.urlparse
botocore.httpchecksum.urlparse = lambda u: real_urlparse(u.replace("http://", "https://", 1))
try:
    s3.put_object(Bucket="biometrics", Key="chunked", Body=io.BytesIO(data))
    h = s3.head_object(Bucket="biometrics", Key="chunked", ChecksumMode="ENABLED")
    out["chunked_trailer_crc32"] = h.get("ChecksumCRC32") == crc
    out["chunked_roundtrip"] = s3.get_object(Bucket="biometrics", Key="chunked")["Body"].read() == data
    out["chunked_encoding_dropped"] = "ContentEncoding" not in h
finally:
    botocore.httpchecksum.urlparse = real_urlparse

section("before Presigned URLs")
# --- Presigned URLs ---------------------------------------------------------------------
for kind, c in (("v2", s3), ("v4", client(signature_version="s3v4"))):
    url = c.generate_presigned_url("put_object", Params={"Bucket": "biometrics", "Key": f"pre-{kind}"})
    status, _ = http_status(url, "PUT", b"presigned body")
    back = s3.get_object(Bucket="biometrics", Key=f"pre-{kind}")["Body"].read()
    out[f"presigned_put_{kind}"] = [status, back == b"presigned body"]
url = s3.generate_presigned_url("get_object", Params={"Bucket": "biometrics", "Key": "orig"},
                                ExpiresIn=-60)
out["expired_v2"] = http_status(url)[0]
real_now = botocore.auth.get_current_datetime
botocore.auth.get_current_datetime = lambda: real_now() - datetime.timedelta(hours=2)
try:
    url = client(signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": "biometrics", "Key": "orig"}, ExpiresIn=60)
finally:
    botocore.auth.get_current_datetime = real_now
status, body = http_status(url)
out["expired_v4"] = [status, b"AccessDenied" in body]

section("before Answers for features")
# --- Answers for features the gateway does not have ---------------------------------------
acl = s3.get_bucket_acl(Bucket="biometrics")
out["acl"] = [g["Permission"] for g in acl["Grants"]]
versions = s3.list_object_versions(Bucket="biometrics", Prefix="orig")
out["versions"] = [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions["Versions"]]
out["location"] = s3.get_bucket_location(Bucket="biometrics").get("LocationConstraint")

section("before Keys that need encoding")
# --- Keys that need encoding ------------------------------------------------------------
odd = ["odd/a b+c", "odd/ünïcødé", "odd/tab\there", "odd/100%", "odd/q?x=1&y"]
for k in odd:
    s3.put_object(Bucket="biometrics", Key=k, Body=k.encode())
listed = s3.list_objects_v2(Bucket="biometrics", Prefix="odd/")  # botocore asks for url encoding
out["odd_keys_listed"] = sorted(o["Key"] for o in listed["Contents"]) == sorted(odd)
out["odd_keys_read"] = all(s3.get_object(Bucket="biometrics", Key=k)["Body"].read() == k.encode() for k in odd)

section("before Grants and anonymous")
# --- Grants and anonymous access ----------------------------------------------------------
w = client(writer_key, writer_secret)
out["writer_put"] = code(w.put_object, Bucket="biometrics", Key="from-branch-018", Body=b"scan")
out["writer_get"] = code(w.get_object, Bucket="biometrics", Key="from-branch-018")
out["writer_list"] = code(w.list_objects_v2, Bucket="biometrics")
out["writer_other_bucket"] = code(w.put_object, Bucket="firmware", Key="x", Body=b"x")
out["writer_create_bucket"] = code(w.create_bucket, Bucket="mine")
out["writer_copy_from_unreadable"] = code(w.copy_object, Bucket="biometrics", Key="stolen",
                                          CopySource={"Bucket": "firmware", "Key": "fw.bin"})
s3.put_object(Bucket="firmware", Key="fw.bin", Body=b"firmware image")
out["anonymous_read_firmware"] = list(http_status(f"{endpoint}/firmware/fw.bin"))
out["anonymous_read_firmware"][1] = out["anonymous_read_firmware"][1] == b"firmware image"
status, body = http_status(f"{endpoint}/biometrics/orig")
out["anonymous_read_biometrics"] = [status, b"AccessDenied" in body]
out["anonymous_write_firmware"] = http_status(f"{endpoint}/firmware/evil", "PUT", b"x")[0]
# --- Virtual-host style: <bucket>.s3.test, resolved here to the gateway -------------------
real_getaddrinfo = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: real_getaddrinfo(
    "127.0.0.1" if host.endswith("s3.test") else host, *a, **k)
port = urllib.parse.urlsplit(endpoint).port
vh = boto3.client("s3", endpoint_url=f"http://s3.test:{port}", aws_access_key_id=access,
                  aws_secret_access_key=secret, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "virtual"}))
vh.put_object(Bucket="biometrics", Key="vhost/key", Body=b"virtual host")
out["virtual_host_get"] = vh.get_object(Bucket="biometrics", Key="vhost/key")["Body"].read() == b"virtual host"
out["virtual_host_list"] = [o["Key"] for o in vh.list_objects_v2(Bucket="biometrics", Prefix="vhost/")["Contents"]]
out["virtual_host_anonymous"] = http_status(f"http://firmware.s3.test:{port}/fw.bin")
out["virtual_host_anonymous"] = [out["virtual_host_anonymous"][0], out["virtual_host_anonymous"][1] == b"firmware image"]
socket.getaddrinfo = real_getaddrinfo
section("end")
print(json.dumps(out))
