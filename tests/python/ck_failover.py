"""confluent-kafka: produce with acks=all at a fixed rate for --seconds and report, for every
record, how long its acknowledgement took. A site killed meanwhile shows as a stretch of records
whose acknowledgements all arrive late: the write unavailability is the longest wait of any
record (the failover benchmark, scripts/bench-failover). Each value carries its send time."""
import argparse, json, time
from confluent_kafka import Producer

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--rate", type=float, default=500, help="records per second")
ap.add_argument("--seconds", type=float, default=20)
a = ap.parse_args()

waits_ms, errors = [], []
def done(err, msg):
    if err:
        errors.append(str(err))
        return
    sent = float(msg.value().decode().split(" ", 1)[0])
    waits_ms.append((sent, (time.time() - sent) * 1000))

p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 2, "message.timeout.ms": 120000,
              "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 200,
              "topic.metadata.refresh.interval.ms": 1000})
t0 = time.time()
i = 0
while time.time() - t0 < a.seconds:
    ahead = t0 + i / a.rate - time.time()
    if ahead > 0:
        p.poll(ahead)
        continue
    try:
        p.produce(a.topic, key=str(i % 64), value=f"{time.time():.6f} {i}", on_delivery=done)
        i += 1
    except BufferError:
        p.poll(0.05)
        continue
    p.poll(0)
left = p.flush(120)
waits = sorted(w for _, w in waits_ms)
worst = max(waits_ms, key=lambda sw: sw[1]) if waits_ms else (0, 0)
pct = lambda q: round(waits[min(len(waits) - 1, int(q * len(waits)))], 1) if waits else None
print(json.dumps({"sent": i, "acked": len(waits_ms), "unflushed": left, "error_count": len(errors),
                  "errors": errors[:3], "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                  "max_wait_ms": round(worst[1], 1), "worst_sent_at_s": round(worst[0] - t0, 2)}))
