"""kafka-python consumer group: two members share a topic; when one leaves, the other takes
over every partition and resumes from committed offsets. Prints one JSON object."""
import argparse, json, time
import kafka
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from group_members import Members

ASSIGNORS = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor, "sticky": StickyPartitionAssignor}
ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--assignor", default="range")
ap.add_argument("--partitions", type=int, default=6)
ap.add_argument("--per-phase", type=int, default=600)
a = ap.parse_args()
group = f"group-{a.topic}"

KafkaAdminClient(bootstrap_servers=a.bootstrap).create_topics([NewTopic(a.topic, a.partitions, 1)])
producer = kafka.KafkaProducer(bootstrap_servers=a.bootstrap)
def produce(phase, n):
    for i in range(n):
        producer.send(a.topic, key=str(i).encode(), value=f"{phase}-{i}".encode())
    producer.flush(30)

def consume(name):
    c = kafka.KafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id=group, auto_offset_reset="earliest",
                            enable_auto_commit=False, partition_assignment_strategy=[ASSIGNORS[a.assignor]])
    while not stop.get(name):
        batch = c.poll(timeout_ms=200)
        got = [m.value.decode() for ms in batch.values() for m in ms]
        if got:
            c.commit()
        with lock:
            consumed.extend((name, v) for v in got)
            assignment[name] = {tp.partition for tp in c.assignment()}
    c.close()
    with lock:
        assignment[name] = set()

members = Members(consume, timeout=90)
lock, consumed, assignment, stop = members.lock, members.consumed, members.assignment, members.stop
wait, unique = members.wait, members.unique

produce("one", a.per_phase)
t0 = time.time()
members.start("a", "b")
wait("both members assigned", lambda: all(assignment.get(n) for n in ("a", "b")))
first_assignment_s = time.time() - t0
wait("phase one consumed", lambda: len(unique()) >= a.per_phase)
produce("two", a.per_phase)
stop["b"] = True
t1 = time.time()
wait("a owns every partition", lambda: assignment.get("a") == set(range(a.partitions)) and not assignment.get("b"))
rebalance_s = time.time() - t1
wait("phase two consumed", lambda: len(unique()) >= 2 * a.per_phase)
stop["a"] = True
members.join()
print(json.dumps({"first_assignment_s": round(first_assignment_s, 2), "rebalance_s": round(rebalance_s, 2),
                  "consumed_unique": len(unique()), "duplicates": len(consumed) - len(unique())}))
