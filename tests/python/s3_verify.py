"""After the crash: list the crash bucket and check every object's content against its key;
list the multipart uploads the crash interrupted and abort them (their space must be
reclaimable). Prints JSON."""
import json
import sys

import boto3

from s3_crash_objects import content

endpoint, access, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                  region_name="us-east-1")

listed, bad = [], []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
    for o in page.get("Contents", []):
        key = o["Key"]
        listed.append(key)
        body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
        if body != content(int(key.split("-")[1])):
            bad.append(key)
interrupted = s3.list_multipart_uploads(Bucket="crash").get("Uploads", [])
for u in interrupted:
    s3.abort_multipart_upload(Bucket="crash", Key=u["Key"], UploadId=u["UploadId"])
print(json.dumps({"listed": listed, "bad": bad, "interrupted_uploads": len(interrupted)}))
