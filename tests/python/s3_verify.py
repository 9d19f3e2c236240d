"""List the crash bucket and check every object's content against its key. Prints JSON."""
import json
import sys

import boto3

endpoint, access, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                  region_name="us-east-1")


def content(i):
    return (f"object-{i}:".encode() * 40000)[: 1000 + (i * 37_123) % 2_500_000]


listed, bad = [], []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
    for o in page.get("Contents", []):
        key = o["Key"]
        listed.append(key)
        body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        if body != content(int(key.split("-")[1])):
            bad.append(key)
print(json.dumps({"listed": listed, "bad": bad}))
