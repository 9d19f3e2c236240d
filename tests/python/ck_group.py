"""confluent-kafka consumer group: two members share a topic; when one leaves, the other takes
over every partition and resumes from committed offsets; a later member of the group reads
only what is new. Prints one JSON object."""
import argparse, json, time
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from group_members import Members

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

refused = []               # commits refused during a rebalance, retried later

def consume(name):
    # A synchronous commit may be refused while the group rebalances, as Kafka refuses it:
    # REBALANCE_IN_PROGRESS while the group completes a rebalance, ILLEGAL_GENERATION when the
    # commit was sent under the generation that the member's own rejoin has just ended (the
    # cooperative assignor keeps consuming through both). As a careful application does, keep
    # such offsets pending while the partition stays ours: commit them after the next poll and,
    # at the latest, when the partition is revoked. A revoked partition's offsets are never
    # committed later: the new owner may have moved past them.
    pending = {}           # partition -> next offset to commit
    refusable = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)

    def commit_pending(c, partitions=None):
        todo = [TopicPartition(a.topic, p, o) for p, o in pending.items()
                if partitions is None or p in partitions]
        if not todo:
            return
        try:
            c.commit(offsets=todo, asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() not in refusable:
                raise
            with lock:
                refused.append((name, e.args[0].name()))
            return
        for tp in todo:
            if pending.get(tp.partition) == tp.offset:
                del pending[tp.partition]

    def on_revoke(c, partitions):
        revoked = {tp.partition for tp in partitions}
        commit_pending(c, revoked)
        for p in revoked:
            pending.pop(p, None)

    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "partition.assignment.strategy": a.assignor})
    c.subscribe([a.topic], on_revoke=on_revoke)
    while not stop.get(name):
        m = c.poll(0.2)
        with lock:
            assignment[name] = {tp.partition for tp in c.assignment()}
        commit_pending(c)
        if m is None or m.error():
            continue
        pending[m.partition()] = m.offset() + 1
        commit_pending(c)
        with lock:
            consumed.append((name, m.value().decode()))
    c.close()
    with lock:
        assignment[name] = set()

members = Members(consume, timeout=60)
lock, consumed, assignment, stop = members.lock, members.consumed, members.assignment, members.stop
wait, unique = members.wait, members.unique

produce("one", a.per_phase)
t0 = time.time()
members.start("a", "b")
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
members.join()

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
    "commits_refused": len(refused),
    "late_new": sum(v.startswith("three-") for v in late_values), "late_old": sum(not v.startswith("three-") for v in late_values),
}))
