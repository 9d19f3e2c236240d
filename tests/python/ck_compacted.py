"""confluent-kafka against a compacted topic. Subcommands print one JSON object:
  create  --topic T [--rf N] --config k=v ...   AdminClient.create_topics, one partition
  produce --topic T --keys K --rounds R --tombstones N
          R rounds over keys k0..k(K-1) (acks=all), then tombstones for the first N keys, then
          one record without a key (a compacted topic must refuse it): every acknowledgement
          as [offset, key, value or null] and the keyless record's error
  read    --topic T [--from O] [--max M]
          records from offset O (at most M), as [offset, key, value or null]"""
import argparse, json, sys
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("command", choices=["create", "produce", "read"])
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--rf", type=int, default=1)
ap.add_argument("--keys", type=int, default=50)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--tombstones", type=int, default=0)
ap.add_argument("--value-bytes", type=int, default=100)
ap.add_argument("--from", dest="start", type=int, default=0)
ap.add_argument("--max", type=int, default=0)
a = ap.parse_args()


def text(b):
    return None if b is None else b.decode()


if a.command == "create":
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    configs = dict(c.split("=", 1) for c in a.config)
    futures = admin.create_topics([NewTopic(a.topic, 1, a.rf, config=configs)])
    futures[a.topic].result(30)
    print(json.dumps({"created": a.topic}))

elif a.command == "produce":
    acked, errors = [], []

    def done(err, msg):
        if err:
            errors.append(err.name())
        else:
            acked.append([msg.offset(), text(msg.key()), text(msg.value())])

    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": True})
    pad = "x" * a.value_bytes
    # One batch per round at least (flushed), so that the rounds spread over segments.
    for r in range(a.rounds):
        for k in range(a.keys):
            p.produce(a.topic, key=f"k{k}", value=f"r{r}-{pad}", callback=done)
            p.poll(0)
        p.flush(60)
    for k in range(a.tombstones):
        p.produce(a.topic, key=f"k{k}", value=None, callback=done)
    left = p.flush(60)
    # A record without a key, on its own (a plain producer: the idempotent one would stop
    # at a batch-level error).
    keyless = []
    q = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})
    q.produce(a.topic, value=b"no key", callback=lambda err, msg: keyless.append(
        err.name() if err else "accepted"))
    q.flush(30)
    print(json.dumps({"acked": acked, "errors": errors[:5], "unflushed": left,
                      "keyless": keyless[0] if keyless else "no answer"}))

else:
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "compacted-reader",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(a.topic, 0, a.start)])
    out = []
    while True:
        m = c.poll(30)
        if m is None:
            sys.exit("no answer within 30 s")
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                break
            raise KafkaException(m.error())
        out.append([m.offset(), text(m.key()), text(m.value())])
        if a.max and len(out) >= a.max:
            break
    c.close()
    print(json.dumps({"records": out}))
