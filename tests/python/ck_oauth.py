"""confluent-kafka logging in with SASL/OAUTHBEARER over SASL_SSL with a given JWT (oauth_cb
hands it to librdkafka as an identity provider's client would). Produces a few records and
lists topics. Prints one JSON object: the delivery errors and whether metadata came back."""
import argparse, json, time
from confluent_kafka import KafkaException, Producer

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--token", required=True)
ap.add_argument("--ca", required=True)
ap.add_argument("--topic", default="people")
a = ap.parse_args()

def oauth_cb(_config):
    # The expiry librdkafka schedules its refresh by; the token's own exp is what the broker checks.
    return a.token, time.time() + 3600

p = Producer({"bootstrap.servers": a.bootstrap, "security.protocol": "sasl_ssl",
              "sasl.mechanism": "OAUTHBEARER", "oauth_cb": oauth_cb, "ssl.ca.location": a.ca,
              "acks": "all", "message.timeout.ms": 3000, "socket.timeout.ms": 3000})
errors = []
for i in range(3):
    p.produce(a.topic, value=f"v{i}".encode(), callback=lambda e, m: errors.append(e.name()) if e else None)
left = p.flush(10)
try:
    topics = sorted(p.list_topics(timeout=3).topics)
except KafkaException as e:
    topics = e.args[0].name()
print(json.dumps({"errors": sorted(set(errors)), "unflushed": left, "topics": topics}))
