// kafkajs (npm) moves every partition of a topic off its leader's broker onto a broker it is
// not on yet (AlterPartitionReassignments), lists the moves until none is left
// (ListPartitionReassignments), reads the metadata after, and tries a target that leaves a
// data site without a replica (refused). Prints one JSON object of observations.
//   node reassign.js --bootstrap 127.0.0.1:9092 --topic orders --one-site 1,2
const { Kafka, logLevel } = require('kafkajs')

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) throw new Error(`--${name} is required`)
  return process.argv[i + 1]
}
const bootstrap = arg('bootstrap')
const topic = arg('topic')
const oneSite = arg('one-site').split(',').map(Number)
const MOVE_DEADLINE_MS = 180000

const replicasOf = async (admin) => {
  const meta = await admin.fetchTopicMetadata({ topics: [topic] })
  return meta.topics[0].partitions
    .map(p => ({ partition: p.partitionId, leader: p.leader, replicas: p.replicas, isr: p.isr }))
    .sort((a, b) => a.partition - b.partition)
}

async function main () {
  const out = {}
  const kafka = new Kafka({ clientId: 'reassign-node', brokers: bootstrap.split(','), logLevel: logLevel.ERROR })
  const admin = kafka.admin()
  await admin.connect()
  const { brokers } = await admin.describeCluster()
  const ids = brokers.map(b => b.nodeId)
  out.before = await replicasOf(admin)
  out.targets = {}
  const partitionAssignment = out.before.map(p => {
    const spare = ids.find(id => !p.replicas.includes(id))
    const replicas = [spare, ...p.replicas.filter(r => r !== p.leader)]
    out.targets[p.partition] = replicas
    return { partition: p.partition, replicas }
  })
  await admin.alterPartitionReassignments({ topics: [{ topic, partitionAssignment }] })
  const first = await admin.listPartitionReassignments({})
  out.listed_at_first = first.topics.flatMap(t => t.partitions).length
  const deadline = Date.now() + MOVE_DEADLINE_MS
  for (;;) {
    const listed = await admin.listPartitionReassignments({})
    if (listed.topics.every(t => t.partitions.length === 0)) break
    if (Date.now() > deadline) throw new Error(`still moving: ${JSON.stringify(listed)}`)
    await new Promise(resolve => setTimeout(resolve, 250))
  }
  out.after = await replicasOf(admin)
  try {
    await admin.alterPartitionReassignments({
      topics: [{ topic, partitionAssignment: [{ partition: 0, replicas: oneSite }] }]
    })
    out.one_site = 'accepted'
  } catch (e) {
    out.one_site = (e.errors && e.errors[0] && e.errors[0].type) || e.type || e.message
  }
  await admin.disconnect()
  console.log(JSON.stringify(out))
}

main().catch(e => { console.error(e); process.exit(1) })
