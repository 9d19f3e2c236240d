"""kafka-python: produce keyed records with headers, read them back, check every value in
order per partition. Prints one JSON object."""
import argparse, json, time
import kafka
from kafka.admin import KafkaAdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--codec", default=None)
ap.add_argument("--count", type=int, default=2000)
ap.add_argument("--partitions", type=int, default=3)
ap.add_argument("--config", action="append", default=[],
                help="KEY=VALUE for every client, kafka-python's names (security_protocol=SASL_SSL...)")
a = ap.parse_args()
extra = dict(kv.split("=", 1) for kv in a.config)

KafkaAdminClient(bootstrap_servers=a.bootstrap, **extra).create_topics([NewTopic(a.topic, a.partitions, 1)])
p = kafka.KafkaProducer(bootstrap_servers=a.bootstrap, compression_type=a.codec, **extra)
futures = []
for i in range(a.count):
    value = f"{a.codec}-{i}-" + "v" * (i % 500)
    futures.append((value, p.send(a.topic, key=f"key-{i % 17}".encode(), value=value.encode(),
                                  headers=[("seq", str(i).encode())])))
p.flush(60)
acked = {v: (md.partition, md.offset) for v, md in ((v, f.get(30)) for v, f in futures)}

c = kafka.KafkaConsumer(bootstrap_servers=a.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                        consumer_timeout_ms=5000, **extra)
c.assign([kafka.TopicPartition(a.topic, i) for i in range(a.partitions)])
c.seek_to_beginning()
seen, in_order, last = {}, True, {}
deadline = time.time() + 60
while len(seen) < len(acked) and time.time() < deadline:
    for m in c:
        v = m.value.decode()
        seen[v] = (m.partition, m.offset)
        seq = int(dict(m.headers)["seq"].decode())
        in_order &= seq > last.get(m.partition, -1)
        last[m.partition] = seq
        if len(seen) == len(acked):
            break
c.close()
print(json.dumps({"produced": a.count, "acked": len(acked), "consumed": len(seen),
                  "positions_match": all(seen.get(v) == pos for v, pos in acked.items()), "in_order": in_order}))
