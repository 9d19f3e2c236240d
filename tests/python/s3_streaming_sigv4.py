"""SigV4 streaming payload signing (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD,
each aws-chunked chunk signed with the previous signature), which the AWS Java SDK and others
send and botocore does not: the seed signature comes from botocore's own SigV4 signer, the
chunk signatures follow the AWS documentation ("Signature Calculations for the Authorization
Header: Transferring Payload in Multiple Chunks"). Also a header-signed request from a clock
an hour off. Prints a JSON summary."""
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
print(json.dumps(out))
