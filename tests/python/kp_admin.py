"""kafka-python KafkaAdminClient against the broker. Prints one JSON object of observations."""
import argparse, json
import kafka
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewPartitions, NewTopic

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
a = ap.parse_args()
T = a.topic
admin = KafkaAdminClient(bootstrap_servers=a.bootstrap)
r = {}
admin.create_topics([NewTopic(T, 2, 1, topic_configs={"retention.ms": "600000"})])
admin.create_partitions({T: NewPartitions(3)})
r["partitions"] = len(admin.describe_topics([T])[0]["partitions"])
cfg = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, T)])["topic"][T]
r["retention_ms"] = cfg["retention.ms"]["value"]
admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, T, {"retention.ms": "900000"})])
r["retention_ms_after"] = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, T)])["topic"][T]["retention.ms"]["value"]
broker = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")], config_filter="all")["broker"]["1"]
r["broker_num_partitions_read_only"] = broker["num.partitions"]["read_only"]
p = kafka.KafkaProducer(bootstrap_servers=a.bootstrap)
for i in range(20):
    p.send(T, value=f"x{i}".encode(), partition=0)
p.flush()
r["low_watermark"] = admin.delete_records({kafka.TopicPartition(T, 0): 5})[kafka.TopicPartition(T, 0)]["low_watermark"]
cluster = admin.describe_cluster()
r["controller_id"] = cluster["controller_id"]
admin.delete_topics([T])
r["topic_deleted"] = T not in admin.list_topics()
print(json.dumps(r))
