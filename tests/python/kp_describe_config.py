"""One topic configuration value as kafka-python's admin client describes it (JSON)."""
import argparse, json
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--key", required=True)
a = ap.parse_args()
admin = KafkaAdminClient(bootstrap_servers=a.bootstrap)
cfg = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, a.topic)])["topic"][a.topic]
print(json.dumps({"value": cfg[a.key]["value"]}))
admin.close()
