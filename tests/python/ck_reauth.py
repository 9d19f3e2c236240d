"""A confluent-kafka producer logged in with SCRAM, producing for --seconds while its login
must be renewed (KIP-368); after --remove-after seconds the script removes the user's
credentials over the admin listener. Prints one JSON object: records acknowledged before and
after the removal (by second), and the errors seen."""
import argparse, json, time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--admin", required=True, help="a listener where credentials may be altered")
ap.add_argument("--topic", required=True)
ap.add_argument("--user", required=True)
ap.add_argument("--password", required=True)
ap.add_argument("--seconds", type=float, default=12)
ap.add_argument("--remove-after", type=float, default=None)
a = ap.parse_args()

p = Producer({"bootstrap.servers": a.bootstrap, "security.protocol": "sasl_plaintext",
              "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": a.user, "sasl.password": a.password,
              "acks": "all", "linger.ms": 5, "message.timeout.ms": 4000})
start = time.time()
acked_at, errors = [], []
def done(err, msg):
    if err:
        errors.append(str(err))
    else:
        acked_at.append(time.time() - start)
removed_at = None
i = 0
while time.time() - start < a.seconds:
    p.produce(a.topic, value=f"r-{i}".encode(), callback=done)
    i += 1
    p.poll(0.05)
    if a.remove_after is not None and removed_at is None and time.time() - start >= a.remove_after:
        admin = AdminClient({"bootstrap.servers": a.admin})
        alterations = [UserScramCredentialDeletion(a.user, ScramMechanism.SCRAM_SHA_512)]
        for f in admin.alter_user_scram_credentials(alterations).values():
            f.result(30)
        removed_at = time.time() - start
p.flush(10)
print(json.dumps({
    "sent": i, "acked": len(acked_at), "removed_at": removed_at,
    "last_acked_at": max(acked_at) if acked_at else None,
    "acked_after_removal": [round(t - removed_at, 2) for t in acked_at if removed_at is not None and t > removed_at][-5:],
    "errors": sorted(set(errors))[:5], "error_count": len(errors),
}))
