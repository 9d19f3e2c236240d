"""confluent-kafka AdminClient against the broker: topics, partitions, configs, offsets by
timestamp, DeleteRecords, groups, cluster. Prints one JSON object of observations."""
import argparse, json, time
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, OffsetSpec)

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
a = ap.parse_args()
T = a.topic
admin = AdminClient({"bootstrap.servers": a.bootstrap})
r = {}

def wait(futures):
    return {k: f.result() for k, f in futures.items()}

wait(admin.create_topics([NewTopic(T, 2, 1, config={"retention.ms": "3600000", "max.message.bytes": "2000000"})]))
try:
    wait(admin.create_topics([NewTopic(T, 2, 1)]))
    r["duplicate_create"] = "accepted"
except Exception as e:
    r["duplicate_create"] = e.args[0].name()
try:
    wait(admin.create_topics([NewTopic(T + "-bad", 1, 1, config={"retention.ms": "soon"})]))
    r["bad_config"] = "accepted"
except Exception as e:
    r["bad_config"] = e.args[0].name()

def topic_configs():
    res = ConfigResource("topic", T)
    return {k: (v.value, v.source) for k, v in wait(admin.describe_configs([res]))[res].items()}
c = topic_configs()
r["retention_ms"], r["retention_source"] = c["retention.ms"][0], c["retention.ms"][1]
r["segment_bytes_default"] = c["segment.bytes"][0]
res = ConfigResource("topic", T, incremental_configs=[
    ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)])
wait(admin.incremental_alter_configs([res]))
c = topic_configs()
r["retention_ms_after"], r["max_message_bytes_after"] = c["retention.ms"][0], c["max.message.bytes"][0]

wait(admin.create_partitions([NewPartitions(T, 4)]))
r["partitions"] = len(admin.list_topics(T, timeout=10).topics[T].partitions)

base = int(time.time() * 1000) - 200_000
p = Producer({"bootstrap.servers": a.bootstrap})
for i in range(100):
    p.produce(T, value=f"ts-{i}", partition=0, timestamp=base + i * 1000)
assert p.flush(30) == 0
c0 = Consumer({"bootstrap.servers": a.bootstrap, "group.id": f"adm-{T}", "enable.auto.commit": False})
found = c0.offsets_for_times([TopicPartition(T, 0, base + 50_500)], timeout=10)
r["offset_for_time"] = found[0].offset
tp = TopicPartition(T, 0)
lo = wait(admin.list_offsets({tp: OffsetSpec.earliest()}))[tp].offset
hi = wait(admin.list_offsets({tp: OffsetSpec.latest()}))[tp].offset
r["earliest"], r["latest"] = lo, hi
r["max_timestamp_offset"] = wait(admin.list_offsets({tp: OffsetSpec.max_timestamp()}))[tp].offset
deleted = wait(admin.delete_records([TopicPartition(T, 0, 30)]))
r["low_watermark"] = list(deleted.values())[0].low_watermark
r["earliest_after_delete"] = wait(admin.list_offsets({tp: OffsetSpec.earliest()}))[tp].offset

c0.assign([TopicPartition(T, 0, 30)])
m = None
deadline = time.time() + 30
while m is None and time.time() < deadline:
    m = c0.poll(0.5)
c0.commit(message=m, asynchronous=False)
c0.close()
g = f"adm-{T}"
groups = admin.list_consumer_groups().result()
r["group_listed"] = any(x.group_id == g for x in groups.valid)
desc = wait(admin.describe_consumer_groups([g]))[g]
r["group_state"] = str(desc.state).split(".")[-1]
offs = wait(admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)]))[g]
r["committed"] = [x.offset for x in offs.topic_partitions if x.partition == 0]
wait(admin.delete_consumer_groups([g]))
r["group_deleted"] = not any(x.group_id == g for x in admin.list_consumer_groups().result().valid)

cluster = admin.describe_cluster().result()
r["cluster_nodes"], r["cluster_id_set"] = len(cluster.nodes), bool(cluster.cluster_id)
wait(admin.delete_topics([T]))
deadline = time.time() + 10
while T in admin.list_topics(timeout=10).topics and time.time() < deadline:
    time.sleep(0.1)
r["topic_deleted"] = T not in admin.list_topics(timeout=10).topics
print(json.dumps(r))
