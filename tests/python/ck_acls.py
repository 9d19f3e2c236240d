"""confluent-kafka against a broker with ACLs: manage bindings (CreateAcls, DescribeAcls,
DeleteAcls), create topics, produce and consume in a group, as the principal the --config
settings log in as. Prints one JSON object with each step's outcome (null, or the error's
name)."""
import argparse, json
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType)

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--config", action="append", default=[], help="KEY=VALUE")
ap.add_argument("--allow", action="append", default=[],
                help="RESOURCE:NAME:PATTERN:PRINCIPAL:OPERATION (TOPIC:branch-017.:PREFIXED:User:branch-017:WRITE)")
ap.add_argument("--deny", action="append", default=[], help="as --allow")
ap.add_argument("--describe-acls", action="store_true")
ap.add_argument("--delete-acls-of", default=None, help="PRINCIPAL: delete every binding of it")
ap.add_argument("--create-topic", action="append", default=[])
ap.add_argument("--produce", default=None, help="TOPIC")
ap.add_argument("--consume", default=None, help="TOPIC")
ap.add_argument("--group", default="g")
ap.add_argument("--operations-on", default=None, help="TOPIC: the operations metadata says we may do")
a = ap.parse_args()
conf = {"bootstrap.servers": a.bootstrap, **dict(kv.split("=", 1) for kv in a.config)}
admin = AdminClient(conf)
out = {}

def outcome(f):
    try:
        return None, f.result(30)
    except KafkaException as e:
        return e.args[0].name(), None

def binding(spec, permission):
    resource, name, pattern, kind, principal, operation = spec.split(":")
    return AclBinding(ResourceType[resource], name, ResourcePatternType[pattern], f"{kind}:{principal}",
                      "*", AclOperation[operation], permission)

bindings = [binding(s, AclPermissionType.ALLOW) for s in a.allow] + [binding(s, AclPermissionType.DENY) for s in a.deny]
if bindings:
    out["created"] = [outcome(f)[0] for f in admin.create_acls(bindings).values()]
for t in a.create_topic:
    out.setdefault("topics", {})[t] = outcome(admin.create_topics([NewTopic(t, 1, 1)])[t])[0]
if a.describe_acls:
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    err, found = outcome(admin.describe_acls(everything))
    out["described"] = err or sorted(f"{b.restype.name}:{b.name}:{b.resource_pattern_type.name}:{b.principal}:"
                                     f"{b.operation.name}:{b.permission_type.name}" for b in found)
if a.delete_acls_of:
    f = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, a.delete_acls_of, None,
                         AclOperation.ANY, AclPermissionType.ANY)
    err, deleted = outcome(list(admin.delete_acls([f]).values())[0])
    out["deleted"] = err or len(deleted)
if a.produce:
    errors = []
    p = Producer({**conf, "acks": "all", "message.timeout.ms": 10000})
    for i in range(5):
        p.produce(a.produce, value=f"v{i}".encode(),
                  callback=lambda e, m: errors.append(e.name()) if e else None)
    p.flush(20)
    out["produced"] = errors[0] if errors else None
if a.consume:
    c = Consumer({**conf, "group.id": a.group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([a.consume])
    got, err = 0, None
    for _ in range(40):
        m = c.poll(0.5)
        if m is None:
            if got:
                break
            continue
        if m.error():
            err = m.error().name()
            break
        got += 1
    if got and err is None:
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:
            err = e.args[0].name()
    c.close()
    out["consumed"] = err or got
if a.operations_on:
    from confluent_kafka import TopicCollection
    f = admin.describe_topics(TopicCollection([a.operations_on]), include_authorized_operations=True)
    err, d = outcome(f[a.operations_on])
    out["operations"] = err or sorted(op.name for op in d.authorized_operations)
print(json.dumps(out))
