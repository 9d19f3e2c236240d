"""confluent-kafka: produce keyed records with headers, then read them back and check every
value, in order per partition. Prints one JSON object."""
import argparse, json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--codec", default="none")
ap.add_argument("--count", type=int, default=2000)
ap.add_argument("--partitions", type=int, default=3)
ap.add_argument("--acks", default="all")
ap.add_argument("--idempotence", action="store_true")
ap.add_argument("--config", action="append", default=[],
                help="KEY=VALUE for every client (security.protocol=ssl...)")
a = ap.parse_args()
extra = dict(kv.split("=", 1) for kv in a.config)

admin = AdminClient({"bootstrap.servers": a.bootstrap, **extra})
for f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).values():
    f.result()

p = Producer({"bootstrap.servers": a.bootstrap, "compression.type": a.codec, "acks": a.acks,
              "enable.idempotence": a.idempotence, "linger.ms": 5, **extra})
acked, errors = {}, []
def done(err, msg):
    if err:
        errors.append(str(err))
    else:
        acked[msg.value().decode()] = (msg.partition(), msg.offset())
for i in range(a.count):
    value = f"{a.codec}-{i}-" + "v" * (i % 500)
    p.produce(a.topic, key=f"key-{i % 17}", value=value, headers={"seq": str(i)}, callback=done)
    if i % 1000 == 0:
        p.poll(0)
left = p.flush(60)

c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": f"rt-{a.topic}", "auto.offset.reset": "earliest",
              "enable.auto.commit": False, **extra})
c.assign([TopicPartition(a.topic, i, 0) for i in range(a.partitions)])
seen, in_order, headers_ok = {}, True, True
last = {}
deadline = time.time() + 60
while len(seen) < len(acked) and time.time() < deadline:
    m = c.poll(1.0)
    if m is None or m.error():
        continue
    v = m.value().decode()
    seen[v] = (m.partition(), m.offset())
    seq = int(dict(m.headers() or [])["seq"].decode())
    headers_ok &= v.startswith(f"{a.codec}-{seq}-")
    in_order &= seq > last.get(m.partition(), -1)
    last[m.partition()] = seq
c.close()
print(json.dumps({
    "produced": a.count, "acked": len(acked), "unflushed": left, "errors": errors[:5],
    "consumed": len(seen), "positions_match": all(seen.get(v) == pos for v, pos in acked.items()),
    "in_order": in_order, "headers_ok": headers_ok,
}))
