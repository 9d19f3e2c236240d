"""Upload objects until the gateway goes away, printing each acknowledged key as it is
acknowledged. Object content is a function of its key, so a verifier can check any object."""
import sys

import boto3
from botocore.config import Config

endpoint, access, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                  region_name="us-east-1", config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=10))
s3.create_bucket(Bucket="crash")


def content(i):
    return (f"object-{i}:".encode() * 40000)[: 1000 + (i * 37_123) % 2_500_000]


i = 0
while True:
    try:
        s3.put_object(Bucket="crash", Key=f"obj-{i:05}", Body=content(i))
    except Exception:
        break
    print(f"obj-{i:05}", flush=True)
    i += 1
