"""confluent-kafka static membership: a member restarted with the same group.instance.id gets
its partitions back without a rebalance; the other member never loses its partitions.
Single-threaded: the consumers are polled in turn (a consumer is not shared across threads)."""
import argparse, json, time
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
a = ap.parse_args()
group = f"static-{a.topic}"
admin = AdminClient({"bootstrap.servers": a.bootstrap})
for f in admin.create_topics([NewTopic(a.topic, 4, 1)]).values():
    f.result()

revocations = {"b": 0}
def on_revoke_b(consumer, partitions):
    if partitions:
        revocations["b"] += 1

def consumer(instance, on_revoke=None):
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "group.instance.id": instance,
                  "session.timeout.ms": 30000, "partition.assignment.strategy": "range"})
    c.subscribe([a.topic], **({"on_revoke": on_revoke} if on_revoke else {}))
    return c

def parts(c):
    return sorted(tp.partition for tp in c.assignment())

def poll_until(consumers, cond, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.05)
        if cond():
            return
    raise SystemExit(f"timed out waiting for {what}")

A, B = consumer("member-a"), consumer("member-b", on_revoke_b)
poll_until([A, B], lambda: len(parts(A)) + len(parts(B)) == 4 and parts(A) and parts(B), "a stable group of two")
a_before, b_before, rev_before = parts(A), parts(B), revocations["b"]
A.close()  # a static member does not leave the group on close
t0 = time.time()
A2 = consumer("member-a")
poll_until([A2, B], lambda: parts(A2), "the restarted member's assignment")
rejoin_s = time.time() - t0
# Give a rebalance, if one had been triggered, time to reach B.
end = time.time() + 5
while time.time() < end:
    A2.poll(0.05)
    B.poll(0.05)
result = {"a_before": a_before, "a_after": parts(A2), "b_before": b_before, "b_after": parts(B),
          "b_revocations": revocations["b"] - rev_before, "rejoin_s": round(rejoin_s, 2)}
A2.close(); B.close()
print(json.dumps(result))
