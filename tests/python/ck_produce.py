"""confluent-kafka: produce `count` unique values and report what was acknowledged. With
--acked-file, run until SIGTERM, appending `partition offset value` for every acknowledged
record as soon as its acknowledgement arrives (the durability tests compare this with what
the broker serves after a crash)."""
import argparse, json, os, signal, sys, time
from confluent_kafka import Producer

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, default=0, help="0: until SIGTERM")
ap.add_argument("--acks", default="all")
ap.add_argument("--idempotence", action="store_true")
ap.add_argument("--acked-file")
ap.add_argument("--prefix", default="v")
ap.add_argument("--value-bytes", type=int, default=0,
                help="pad each value to about this size (the padding goes before the prefix)")
ap.add_argument("--rate", type=float, default=0, help="records per second (0: as fast as possible)")
ap.add_argument("--fast-reconnect", action="store_true", help="cap reconnect backoff (for flaky-link tests)")
ap.add_argument("--config", action="append", default=[],
                help="KEY=VALUE for the producer (security.protocol=ssl...)")
a = ap.parse_args()

stopping = False
def on_term(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_term)

out = open(a.acked_file, "a", buffering=1) if a.acked_file else None
acked, errors = 0, []
def done(err, msg):
    global acked
    if err:
        errors.append(str(err))
        return
    acked += 1
    if out:
        # offset() is None when librdkafka acknowledged the record implicitly (a later batch
        # of the partition succeeded after this one's answer was lost): written as -1.
        offset = msg.offset()
        out.write(f"{msg.partition()} {-1 if offset is None else offset} {msg.value().decode()}\n")

conf = {"bootstrap.servers": a.bootstrap, "acks": a.acks, "enable.idempotence": a.idempotence,
        "linger.ms": 2, "message.timeout.ms": 120000}
if os.environ.get("CK_DEBUG"):
    conf["debug"] = os.environ["CK_DEBUG"]
if a.fast_reconnect:
    conf.update({"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 200})
conf.update(dict(kv.split("=", 1) for kv in a.config))
p = Producer(conf)
pad = "x" * a.value_bytes
t0 = time.time()
i = 0
while not stopping and (a.count == 0 or i < a.count):
    if a.rate:
        ahead = t0 + i / a.rate - time.time()
        if ahead > 0:
            p.poll(ahead)
            continue
    try:
        p.produce(a.topic, key=str(i % 64), value=f"{pad}{a.prefix}-{i}", callback=done)
        i += 1
    except BufferError:
        p.poll(0.05)
        continue
    p.poll(0)
left = p.flush(5 if stopping else 120)
if out:
    out.close()
print(json.dumps({"sent": i, "acked": acked, "unflushed": left, "errors": errors[:5], "error_count": len(errors),
                  "seconds": round(time.time() - t0, 2)}))
