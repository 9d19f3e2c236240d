// @kafkajs/confluent-schema-registry (npm) against the broker's Schema Registry, with kafkajs
// carrying the encoded records: register (twice: the same id), encode, produce, consume,
// decode; an incompatible change refused with 409; a compatible one registered and the old
// record still decoded. Prints one JSON object of observations.
//   node sr_client.js --registry http://127.0.0.1:8081 --bootstrap 127.0.0.1:9092 --topic t
const { SchemaRegistry, SchemaType } = require('@kafkajs/confluent-schema-registry')
const { Kafka, logLevel } = require('kafkajs')

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) throw new Error(`--${name} is required`)
  return process.argv[i + 1]
}
const url = arg('registry')
const bootstrap = arg('bootstrap')
const topic = arg('topic')
const subject = `${topic}-value`

const record = (fields) => JSON.stringify({ type: 'record', name: 'Reading', namespace: 'hub.node', fields })
const v1 = record([{ name: 'site', type: 'string' }, { name: 'value', type: 'double' }])
const v2 = record([{ name: 'site', type: 'string' }, { name: 'value', type: 'double' },
  { name: 'unit', type: 'string', default: 'C' }])
const incompatible = record([{ name: 'site', type: 'string' }, { name: 'value', type: 'double' },
  { name: 'unit', type: 'string' }])

async function main () {
  const out = {}
  const registry = new SchemaRegistry({ host: url })
  const { id } = await registry.register({ type: SchemaType.AVRO, schema: v1 }, { subject })
  out.id = id
  out.again = (await registry.register({ type: SchemaType.AVRO, schema: v1 }, { subject })).id
  const encoded = await registry.encode(id, { site: 'A', value: 1.5 })

  const kafka = new Kafka({ clientId: 'sr-node', brokers: [bootstrap], logLevel: logLevel.ERROR })
  const producer = kafka.producer({ allowAutoTopicCreation: true })
  await producer.connect()
  await producer.send({ topic, acks: -1, messages: [{ key: 'A', value: encoded }] })
  await producer.disconnect()

  const consumer = kafka.consumer({ groupId: `sr-node-${Date.now()}` })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const first = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no record within 60 s')), 60000)
    consumer.run({
      eachMessage: async ({ message }) => {
        clearTimeout(timer)
        resolve(message.value)
      }
    }).catch(reject)
  })
  await consumer.disconnect()
  out.decoded = await registry.decode(first)

  try {
    await registry.register({ type: SchemaType.AVRO, schema: incompatible }, { subject })
    out.refused = 'accepted'
  } catch (e) {
    out.refused = e.status || String(e)
  }
  out.v2 = (await registry.register({ type: SchemaType.AVRO, schema: v2 }, { subject })).id
  out.latest = await registry.getLatestSchemaId(subject)
  out.decoded_after_evolution = await registry.decode(first)
  console.log(JSON.stringify(out))
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
