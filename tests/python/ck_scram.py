"""confluent-kafka's AdminClient managing SCRAM credentials (AlterUserScramCredentials,
DescribeUserScramCredentials). Prints one JSON object: each alteration's outcome per user
(null, or the error's name) and the credentials described afterwards."""
import argparse, json
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--upsert", action="append", default=[], help="USER:MECHANISM:PASSWORD[:ITERATIONS]")
ap.add_argument("--delete", action="append", default=[], help="USER:MECHANISM")
ap.add_argument("--describe", action="append", default=None, help="USER")
ap.add_argument("--describe-all", action="store_true")
ap.add_argument("--config", action="append", default=[], help="KEY=VALUE")
a = ap.parse_args()
admin = AdminClient({"bootstrap.servers": a.bootstrap, **dict(kv.split("=", 1) for kv in a.config)})

def mechanism(name):
    return {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}[name]

def error(f):
    try:
        return None, f.result(30)
    except KafkaException as e:
        return e.args[0].name(), None

alterations = []
for u in a.upsert:
    user, m, password, *it = u.split(":")
    info = ScramCredentialInfo(mechanism(m), int(it[0]) if it else 8192)
    alterations.append(UserScramCredentialUpsertion(user, info, password.encode()))
for d in a.delete:
    user, m = d.split(":")
    alterations.append(UserScramCredentialDeletion(user, mechanism(m)))
altered = {}
if alterations:
    altered = {user: error(f)[0] for user, f in admin.alter_user_scram_credentials(alterations).items()}

described = {}
if a.describe is not None or a.describe_all:
    futures = admin.describe_user_scram_credentials(None if a.describe_all else a.describe)
    if not isinstance(futures, dict):
        err, all_users = error(futures)
        futures = {}
        described = {"error": err} if err else {
            u: sorted([str(i.mechanism.name), i.iterations] for i in d.scram_credential_infos)
            for u, d in all_users.items()}
    for user, f in futures.items():
        err, d = error(f)
        described[user] = err or sorted([str(i.mechanism.name), i.iterations] for i in d.scram_credential_infos)
print(json.dumps({"altered": altered, "described": described}))
