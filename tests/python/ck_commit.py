"""confluent-kafka: read up to `count` records as a group member, commit synchronously, leave.
Prints the values read and the committed offsets, so a test can check where the group
resumes (for instance after a broker restart)."""
import argparse, json, time
from confluent_kafka import Consumer, TopicPartition

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--group", required=True)
ap.add_argument("--count", type=int, required=True)
a = ap.parse_args()

c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
c.subscribe([a.topic])
values = []
deadline = time.time() + 60
while len(values) < a.count and time.time() < deadline:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    values.append(m.value().decode())
    c.commit(message=m, asynchronous=False)
committed = c.committed([TopicPartition(a.topic, 0)], timeout=10)
c.close()
print(json.dumps({"values": values, "committed": [tp.offset for tp in committed]}))
