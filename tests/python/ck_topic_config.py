"""Set a topic's configs with confluent-kafka's AdminClient (IncrementalAlterConfigs) and read
them back. Prints one JSON object: the values described after the change."""
import argparse, json
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--set", action="append", default=[], help="name=value")
a = ap.parse_args()
admin = AdminClient({"bootstrap.servers": a.bootstrap})
entries = []
for kv in a.set:
    name, value = kv.split("=", 1)
    entries.append(ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET))
res = ConfigResource("topic", a.topic, incremental_configs=entries)
for f in admin.incremental_alter_configs([res]).values():
    f.result()
described = admin.describe_configs([ConfigResource("topic", a.topic)])
configs = {k: v.value for f in described.values() for k, v in f.result().items()}
print(json.dumps({k.split("=", 1)[0]: configs.get(k.split("=", 1)[0]) for k in a.set}))
