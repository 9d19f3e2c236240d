"""boto3 against the S3 gateway over HTTPS with client certificates and unsigned requests:
the certificate's principal gets the grants of the credential naming it. Arguments: endpoint,
CA, admin cert and key, branch cert and key, a key and secret of the administrator (to sign
with over the branch's certificate). Prints JSON: what each attempt gave."""
import json, sys
import boto3, botocore
from botocore import UNSIGNED
from botocore.config import Config

endpoint, ca, admin_cert, admin_key, branch_cert, branch_key, key, secret = sys.argv[1:9]

def client(cert=None, signed=False, checksums="when_required"):
    # Unsigned aws-chunked bodies (boto3's default trailing checksums) are refused: s3s
    # decodes them only in signed requests.
    config = dict(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10,
                  request_checksum_calculation=checksums)
    if cert:
        config["client_cert"] = cert
    creds = {}
    if signed:
        creds = dict(aws_access_key_id=key, aws_secret_access_key=secret)
    else:
        config["signature_version"] = UNSIGNED
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=ca,
                        config=Config(**config), **creds)

def attempt(f):
    try:
        r = f()
        return "ok" if not isinstance(r, bytes) else r.decode()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    except (botocore.exceptions.SSLError, botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError) as e:
        return type(e).__name__

admin = client((admin_cert, admin_key))
branch = client((branch_cert, branch_key))
anonymous = client()
out = {
    "admin_creates": attempt(lambda: admin.create_bucket(Bucket="biometrics")),
    "admin_creates_private": attempt(lambda: admin.create_bucket(Bucket="private")),
    "admin_writes_private": attempt(lambda: admin.put_object(Bucket="private", Key="x", Body=b"secret")),
    "branch_writes_chunked": attempt(lambda: client((branch_cert, branch_key), checksums="when_supported")
                                     .put_object(Bucket="biometrics", Key="chunked", Body=b"scan")),
    "branch_writes": attempt(lambda: branch.put_object(Bucket="biometrics", Key="scan", Body=b"scan")),
    "branch_reads_its_write_only_bucket": attempt(
        lambda: branch.get_object(Bucket="biometrics", Key="scan")["Body"].read()),
    "branch_reads_private": attempt(lambda: branch.get_object(Bucket="private", Key="x")["Body"].read()),
    "branch_creates_bucket": attempt(lambda: branch.create_bucket(Bucket="mine")),
    "branch_signs_with_admin_key": attempt(
        lambda: client((branch_cert, branch_key), signed=True).list_buckets()),
    "admin_key_without_certificate": attempt(lambda: client(signed=True).list_buckets()),
    "anonymous_reads_private": attempt(lambda: anonymous.get_object(Bucket="private", Key="x")["Body"].read()),
    "admin_reads_scan": attempt(lambda: admin.get_object(Bucket="biometrics", Key="scan")["Body"].read()),
}
print(json.dumps(out))
