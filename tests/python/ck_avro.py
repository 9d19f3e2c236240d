"""confluent-kafka's Schema Registry client and Avro serdes against the broker's registry:
produce Avro records (the serializer registers the schema), read them back with the
deserializer, see an incompatible change refused with 409, evolve compatibly (a new field with
a default) and read the new records with an old reader schema. Prints one JSON object."""
import argparse, json
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--registry", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--registry-ca", help="CA file for an HTTPS registry")
a = ap.parse_args()

V1 = json.dumps({"type": "record", "name": "Reading", "namespace": "scada", "fields": [
    {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"}]})
V2 = json.dumps({"type": "record", "name": "Reading", "namespace": "scada", "fields": [
    {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"},
    {"name": "unit", "type": "string", "default": "C"}]})
BAD = json.dumps({"type": "record", "name": "Reading", "namespace": "scada", "fields": [
    {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"},
    {"name": "site", "type": "string"}]})

client = SchemaRegistryClient({"url": a.registry, **({"ssl.ca.location": a.registry_ca} if a.registry_ca else {})})
subject = f"{a.topic}-value"
ctx = SerializationContext(a.topic, MessageField.VALUE)
producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})

def produce(serializer, rows):
    for r in rows:
        producer.produce(a.topic, value=serializer(r, ctx))
    assert producer.flush(30) == 0

produce(AvroSerializer(client, V1), [{"sensor": f"s{i}", "value": i / 2} for i in range(5)])
v1 = client.get_latest_version(subject)

refused = None
try:
    client.register_schema(subject, Schema(BAD, "AVRO"))
except SchemaRegistryError as e:
    refused = {"status": e.http_status_code, "code": e.error_code}

produce(AvroSerializer(client, V2), [{"sensor": f"n{i}", "value": 10.0 + i, "unit": "K"} for i in range(5)])
# (get_latest_version would answer from the client's cache: ask for version 2 itself.)
v2 = client.get_version(subject, 2)

# An old consumer reads with V1: records written with V2 lose the new field. A new one reads
# with V2: records written with V1 get the field's default.
old = AvroDeserializer(client, V1)
new = AvroDeserializer(client, V2)
consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "avro", "auto.offset.reset": "earliest"})
consumer.subscribe([a.topic])
read_old, read_new = [], []
while len(read_old) < 10:
    m = consumer.poll(10)
    if m is None:
        raise SystemExit(f"timed out after {len(read_old)} records")
    if m.error():
        continue
    read_old.append(old(m.value(), ctx))
    read_new.append(new(m.value(), ctx))
consumer.close()

print(json.dumps({
    "v1": {"version": v1.version, "id": v1.schema_id}, "v2": {"version": v2.version, "id": v2.schema_id},
    "refused": refused, "read_old": read_old, "read_new": read_new,
    "versions": client.get_versions(subject), "subjects": client.get_subjects(),
}))
