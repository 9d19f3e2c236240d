"""Upload objects until the gateway goes away, printing each key as it is acknowledged (a
PUT answered, or a multipart upload's Complete answered). See s3_crash_objects.py."""
import sys

import boto3
from botocore.config import Config

from s3_crash_objects import MiB, content, is_multipart

endpoint, access, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                  region_name="us-east-1", config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=10))
s3.create_bucket(Bucket="crash")


def multipart(key, data):
    uid = s3.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
    parts = []
    for n, chunk in enumerate((data[:5 * MiB], data[5 * MiB:]), start=1):
        etag = s3.upload_part(Bucket="crash", Key=key, UploadId=uid, PartNumber=n, Body=chunk)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket="crash", Key=key, UploadId=uid, MultipartUpload={"Parts": parts})


i = 0
while True:
    key = f"obj-{i:05}"
    try:
        if is_multipart(i):
            multipart(key, content(i))
        else:
            s3.put_object(Bucket="crash", Key=key, Body=content(i))
    except Exception:
        break
    print(key, flush=True)
    i += 1
