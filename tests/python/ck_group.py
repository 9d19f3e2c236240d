"""confluent-kafka consumer group: two members share a topic; when one leaves, the other takes
over every partition and resumes from committed offsets; a later member of the group reads
only what is new. Prints one JSON object."""
import argparse, json, threading, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--assignor", default="range")
ap.add_argument("--partitions", type=int, default=6)
ap.add_argument("--per-phase", type=int, default=600)
a = ap.parse_args()
group = f"group-{a.topic}"

admin = AdminClient({"bootstrap.servers": a.bootstrap})
for f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).values():
    f.result()
producer = Producer({"bootstrap.servers": a.bootstrap})
def produce(phase, n):
    for i in range(n):
        producer.produce(a.topic, key=str(i), value=f"{phase}-{i}")
    assert producer.flush(30) == 0

lock = threading.Lock()
consumed = []              # (member, value)
assignment = {}            # member -> set of partitions
stop = {}

def member(name):
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "partition.assignment.strategy": a.assignor})
    c.subscribe([a.topic])
    while not stop.get(name):
        m = c.poll(0.2)
        with lock:
            assignment[name] = {tp.partition for tp in c.assignment()}
        if m is None or m.error():
            continue
        c.commit(message=m, asynchronous=False)
        with lock:
            consumed.append((name, m.value().decode()))
    c.close()
    with lock:
        assignment[name] = set()

def wait(what, cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with lock:
            if cond():
                return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}: assignment={assignment} consumed={len(consumed)}")

def unique():
    return {v for _, v in consumed}

produce("one", a.per_phase)
t0 = time.time()
threads = {n: threading.Thread(target=member, args=(n,)) for n in ("a", "b")}
for t in threads.values():
    t.start()
wait("both members assigned", lambda: all(assignment.get(n) for n in ("a", "b")))
first_assignment_s = time.time() - t0
split = {n: sorted(assignment[n]) for n in ("a", "b")}
wait("phase one consumed", lambda: len(unique()) >= a.per_phase)

produce("two", a.per_phase)
stop["b"] = True
t1 = time.time()
wait("a owns every partition", lambda: assignment.get("a") == set(range(a.partitions)) and not assignment.get("b"))
rebalance_s = time.time() - t1
wait("phase two consumed", lambda: len(unique()) >= 2 * a.per_phase)
stop["a"] = True
threads["a"].join(); threads["b"].join()

# A new member of the group starts from the committed offsets: only new records.
late = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                 "partition.assignment.strategy": a.assignor})
late.subscribe([a.topic])
produce("three", 10)
late_values = []
deadline = time.time() + 60
while len(late_values) < 10 and time.time() < deadline:
    m = late.poll(0.5)
    if m is not None and not m.error():
        late_values.append(m.value().decode())
late.close()

print(json.dumps({
    "first_assignment_s": round(first_assignment_s, 2), "split": split, "rebalance_s": round(rebalance_s, 2),
    "consumed_unique": len(unique()), "duplicates": len(consumed) - len(unique()),
    "late_new": sum(v.startswith("three-") for v in late_values), "late_old": sum(not v.startswith("three-") for v in late_values),
}))
