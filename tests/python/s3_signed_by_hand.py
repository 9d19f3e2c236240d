"""Requests signed by hand (with botocore's signer) for what S3 clients do not send on their
own. SigV4 streaming payload signing (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD,
each aws-chunked chunk signed with the previous signature), which the AWS Java SDK and others
send and botocore does not: the seed signature comes from botocore's own SigV4 signer, the
chunk signatures follow the AWS documentation ("Signature Calculations for the Authorization
Header: Transferring Payload in Multiple Chunks"). Also a header-signed request from a clock
an hour off, and malformed requests (bad XML, a body cut short, bytes that are not HTTP) after
which the server must still serve. Prints a JSON summary."""
import datetime
import hashlib
import hmac
import http.client
import json
import sys
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials

endpoint, access, secret = sys.argv[1:4]
REGION, SERVICE = "us-east-1", "s3"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def send(method, path, headers, body=b""):
    u = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.netloc, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def signed(method, path, headers, body=b"", now=None):
    """Headers of a botocore SigV4-signed request (x-amz-content-sha256 taken as given)."""
    req = botocore.awsrequest.AWSRequest(method=method, url=endpoint + path, headers=headers, data=body)
    auth = botocore.auth.SigV4Auth(botocore.credentials.Credentials(access, secret), SERVICE, REGION)
    if now is not None:
        real = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: now
    try:
        auth.add_auth(req)
    finally:
        if now is not None:
            botocore.auth.get_current_datetime = real
    return dict(req.headers.items())


def put_streaming(key, data, chunk_size=64 * 1024, tamper=False):
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    encoded_len = sum(len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in chunks)
    headers = signed("PUT", f"/biometrics/{key}", {
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "content-length": str(encoded_len),
    })
    timestamp = headers["X-Amz-Date"]
    date = timestamp[:8]
    scope = f"{date}/{REGION}/{SERVICE}/aws4_request"
    previous = headers["Authorization"].rsplit("Signature=", 1)[1]
    key_bytes = ("AWS4" + secret).encode()
    for part in (date, REGION, SERVICE, "aws4_request"):
        key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
    body = b""
    for i, c in enumerate(chunks):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous,
                             EMPTY_SHA256, hashlib.sha256(c).hexdigest()])
        sig = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        sent = c
        if tamper and i == 1:
            sent = bytes([c[0] ^ 1]) + c[1:]
        body += f"{len(c):x};chunk-signature={sig}\r\n".encode() + sent + b"\r\n"
        previous = sig
    assert len(body) == encoded_len
    return send("PUT", f"/biometrics/{key}", headers, body)


def get(key):
    headers = signed("GET", f"/biometrics/{key}", {"x-amz-content-sha256": EMPTY_SHA256})
    return send("GET", f"/biometrics/{key}", headers)


out = {}
send("PUT", "/biometrics", signed("PUT", "/biometrics", {"x-amz-content-sha256": EMPTY_SHA256}))
data = bytes(range(256)) * 1000  # 256 000 bytes: four chunks and a bit
status, _ = put_streaming("streamed", data)
out["streaming_put"] = status
status, body = get("streamed")
out["streaming_roundtrip"] = status == 200 and body == data
status, body = put_streaming("tampered", data, tamper=True)
out["tampered_chunk"] = [status, b"SignatureDoesNotMatch" in body]
out["tampered_absent"] = get("tampered")[0]
skewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
status, body = send("GET", "/", signed("GET", "/", {"x-amz-content-sha256": EMPTY_SHA256}, now=skewed))
out["skewed_clock"] = [status, b"RequestTimeTooSkewed" in body]

# Malformed requests, correctly signed: clear S3 errors, and the server carries on.
def signed_send(method, path, body):
    headers = signed(method, path, {"x-amz-content-sha256": hashlib.sha256(body).hexdigest()}, body)
    return send(method, path, headers, body)


def error_code(resp):
    status, body = resp
    code = body.split(b"<Code>")[1].split(b"</Code>")[0].decode() if b"<Code>" in body else ""
    return [status, code]


out["delete_objects_bad_xml"] = error_code(signed_send("POST", "/biometrics?delete", b"<Delete><Object>"))
out["complete_bad_xml"] = error_code(signed_send(
    "POST", "/biometrics/k?uploadId=0123456789abcdef0123456789abcdef", b"garbage"))
out["complete_unknown_upload"] = error_code(signed_send(
    "POST", "/biometrics/k?uploadId=0123456789abcdef0123456789abcdef",
    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>"))
out["bad_bucket_name"] = error_code(signed_send("PUT", "/No_Such..Bucket", b""))
# A body shorter than its Content-Length, then the connection closes.
u = urllib.parse.urlsplit(endpoint)
headers = signed("PUT", "/biometrics/short", {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
headers["Content-Length"] = "1000"
conn = http.client.HTTPConnection(u.netloc, timeout=60)
conn.putrequest("PUT", "/biometrics/short", skip_accept_encoding=True)
for k, v in headers.items():
    conn.putheader(k, v)
conn.endheaders()
conn.send(b"only ten b")
conn.close()
# Not HTTP at all.
import socket
with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
    sock.sendall(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
    try:
        reply = sock.recv(100)
    except OSError:
        reply = b""
out["not_http_answer"] = reply[:12].decode(errors="replace")
out["short_body_absent"] = get("short")[0]
out["still_serving"] = get("streamed")[0]
print(json.dumps(out))
