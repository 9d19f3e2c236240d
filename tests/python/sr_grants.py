"""confluent-kafka's SchemaRegistryClient over HTTPS with a client certificate: register the
given subjects, read the latest version of others, list the subjects. Each answer, or the
HTTP status and error code of a refusal, is printed as one JSON object."""
import argparse, json
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

ap = argparse.ArgumentParser()
ap.add_argument("--registry", required=True)
ap.add_argument("--ca", required=True)
ap.add_argument("--cert", required=True)
ap.add_argument("--key", required=True)
ap.add_argument("--register", action="append", default=[])
ap.add_argument("--get", action="append", default=[])
a = ap.parse_args()

SCHEMA = json.dumps({"type": "record", "name": "Alarm", "namespace": "scada",
                     "fields": [{"name": "code", "type": "int"}]})
client = SchemaRegistryClient({"url": a.registry, "ssl.ca.location": a.ca,
                               "ssl.certificate.location": a.cert, "ssl.key.location": a.key})

def attempt(f):
    try:
        return f()
    except SchemaRegistryError as e:
        return {"status": e.http_status_code, "code": e.error_code}

out = {"registered": {s: attempt(lambda: client.register_schema(s, Schema(SCHEMA, "AVRO")) and "ok")
                      for s in a.register},
       "got": {s: attempt(lambda: client.get_latest_version(s).version) for s in a.get},
       "subjects": attempt(client.get_subjects)}
print(json.dumps(out))
