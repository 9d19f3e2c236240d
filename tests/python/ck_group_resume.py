"""confluent-kafka consumer group across a site loss, in two phases.

--phase commit: one member reads COUNT records of TOPIC, commits its offsets synchronously and
  leaves; prints the committed offsets and the group coordinator's broker id.
--phase resume: a new member of the same group (after the coordinator's site died) reads EXPECT
  records (those after the committed offsets); prints the first offset it read per partition.
  A group that lost its committed offsets would start again from offset 0.
Prints one JSON object."""
import argparse, json, time
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--group", required=True)
ap.add_argument("--phase", choices=["commit", "resume"], required=True)
ap.add_argument("--count", type=int, default=0, help="commit: records to read before committing")
ap.add_argument("--expect", type=int, default=0, help="resume: records after the committed offsets")
ap.add_argument("--timeout", type=float, default=90)
a = ap.parse_args()

c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": 10000})
c.subscribe([a.topic])
deadline = time.time() + a.timeout
next_offset, first, read = {}, {}, 0


while read < (a.count if a.phase == "commit" else a.expect):
    if time.time() > deadline:
        raise SystemExit(f"timed out: read {read} records, next offsets {next_offset}")
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    read += 1
    first.setdefault(m.partition(), m.offset())
    next_offset[m.partition()] = m.offset() + 1

if a.phase == "commit":
    c.commit(offsets=[TopicPartition(a.topic, p, o) for p, o in next_offset.items()], asynchronous=False)
c.close()

coordinator = None
if a.phase == "commit":
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    group = admin.describe_consumer_groups([a.group])[a.group].result()
    coordinator = group.coordinator.id
print(json.dumps({"committed": {str(p): o for p, o in next_offset.items()} if a.phase == "commit" else None,
                  "first": {str(p): o for p, o in first.items()}, "read": read, "coordinator": coordinator}))
