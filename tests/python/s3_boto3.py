"""boto3 with its default configuration (default checksums, SigV2 presigned URLs) against
the S3 gateway: buckets, single-part objects with metadata, ranged reads, listing with a
delimiter and pagination, errors, presigned GET, wrong-secret refusal. Prints a JSON summary."""
import json
import sys
import urllib.request

import boto3
import botocore

endpoint, access, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                  aws_secret_access_key=secret, region_name="us-east-1")
out = {}
s3.create_bucket(Bucket="biometrics")
data = bytes(range(256)) * 12000  # 3 MiB: several CRC blocks
put = s3.put_object(Bucket="biometrics", Key="site-17/2026/scan.bin", Body=data,
                    Metadata={"site": "17"}, ContentType="application/octet-stream")
got = s3.get_object(Bucket="biometrics", Key="site-17/2026/scan.bin")
out["roundtrip"] = got["Body"].read() == data
out["etag_matches"] = got["ETag"] == put["ETag"]
out["metadata"] = got["Metadata"]
out["range"] = s3.get_object(Bucket="biometrics", Key="site-17/2026/scan.bin",
                             Range="bytes=1048570-1048589")["Body"].read() == data[1048570:1048590]
for i in range(7):
    s3.put_object(Bucket="biometrics", Key=f"site-17/e{i}", Body=b"x" * i)
listing = s3.list_objects_v2(Bucket="biometrics", Prefix="site-17/", Delimiter="/")
out["delimited"] = {"keys": [o["Key"] for o in listing.get("Contents", [])],
                    "prefixes": [p["Prefix"] for p in listing.get("CommonPrefixes", [])]}
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="biometrics", PaginationConfig={"PageSize": 3})
out["paged"] = [o["Key"] for page in pages for o in page.get("Contents", [])]
pages_v1 = s3.get_paginator("list_objects").paginate(Bucket="biometrics", PaginationConfig={"PageSize": 3})
out["paged_v1"] = [o["Key"] for page in pages_v1 for o in page.get("Contents", [])]
try:
    s3.get_object(Bucket="biometrics", Key="missing")
except botocore.exceptions.ClientError as e:
    out["missing_key"] = e.response["Error"]["Code"]
try:
    s3.get_object(Bucket="no-such-bucket", Key="k")
except botocore.exceptions.ClientError as e:
    out["missing_bucket"] = e.response["Error"]["Code"]
url = s3.generate_presigned_url("get_object", Params={"Bucket": "biometrics", "Key": "site-17/e3"})
out["presigned_kind"] = "v2" if "AWSAccessKeyId=" in url else "v4"
out["presigned_get"] = urllib.request.urlopen(url).read() == b"xxx"
wrong = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                     aws_secret_access_key="not-the-secret", region_name="us-east-1")
try:
    wrong.list_buckets()
except botocore.exceptions.ClientError as e:
    out["wrong_secret"] = e.response["Error"]["Code"]
out["versioning_status"] = s3.get_bucket_versioning(Bucket="biometrics").get("Status")
s3.delete_object(Bucket="biometrics", Key="site-17/e0")
out["after_delete"] = len(s3.list_objects_v2(Bucket="biometrics")["Contents"])
print(json.dumps(out))
