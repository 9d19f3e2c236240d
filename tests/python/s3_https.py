"""boto3 against the S3 gateway over HTTPS, checking its certificate against the hub's CA:
create a bucket, write and read an object, list. Then the same endpoint with plain HTTP,
and with no CA given (the system's trust store), which must both fail. Prints JSON."""
import json, sys
import boto3, botocore
from botocore.config import Config

endpoint, access, secret, ca = sys.argv[1:5]
def client(url, verify):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=access, aws_secret_access_key=secret,
                        region_name="us-east-1", verify=verify,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10))
s3 = client(endpoint, ca)
s3.create_bucket(Bucket="tls-bucket")
data = b"x" * 300000
s3.put_object(Bucket="tls-bucket", Key="scan.bin", Body=data)
out = {"roundtrip": s3.get_object(Bucket="tls-bucket", Key="scan.bin")["Body"].read() == data,
       "listed": [o["Key"] for o in s3.list_objects_v2(Bucket="tls-bucket").get("Contents", [])]}
for name, url, verify in [("plain_http", endpoint.replace("https://", "http://"), ca),
                          ("untrusted", endpoint, True)]:
    try:
        client(url, verify).list_buckets()
        out[name] = "served"
    except (botocore.exceptions.SSLError, botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError, botocore.exceptions.ClientError,
            botocore.exceptions.ReadTimeoutError) as e:
        out[name] = type(e).__name__
print(json.dumps(out))
