// kafkajs (npm) logged in with SCRAM-SHA-256 tries to move partition 0 of a topic
// (AlterPartitionReassignments) and to list moves (ListPartitionReassignments); prints the
// error type of each (null when allowed) as one JSON object.
//   node reassign_denied.js --bootstrap 127.0.0.1:9092 --user u --password pw --topic t --replicas 1
const { Kafka, logLevel } = require('kafkajs')

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) throw new Error(`--${name} is required`)
  return process.argv[i + 1]
}

const errorType = (e) => (e.errors && e.errors[0] && e.errors[0].type) || e.type || e.message

async function main () {
  const kafka = new Kafka({
    clientId: 'reassign-denied',
    brokers: [arg('bootstrap')],
    sasl: { mechanism: 'scram-sha-256', username: arg('user'), password: arg('password') },
    retry: { retries: 0 },
    logLevel: logLevel.NOTHING
  })
  const admin = kafka.admin()
  await admin.connect()
  const out = { altered: null, listed: null }
  const replicas = arg('replicas').split(',').map(Number)
  try {
    await admin.alterPartitionReassignments({
      topics: [{ topic: arg('topic'), partitionAssignment: [{ partition: 0, replicas }] }]
    })
  } catch (e) {
    out.altered = errorType(e)
  }
  try {
    await admin.listPartitionReassignments({})
  } catch (e) {
    out.listed = errorType(e)
  }
  await admin.disconnect()
  console.log(JSON.stringify(out))
}

main().catch(e => { console.error(e); process.exit(1) })
