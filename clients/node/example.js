#!/usr/bin/env node
// Usage:
//   node example.js get KEY [--server host:port]
//   node example.js list STATUS[,STATUS...] [--server host:port]
//   node example.js watch [--from-sequence N] [--max-changes M] [--server host:port]
// `watch` prints one JSON line per disbursement or cancellation and resumes by itself after
// a network failure or a server restart.
'use strict';

const { connect, getOperation, listByStatus, watch } = require('./qistatus');

function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const [command, argument] = process.argv.slice(2);
  const conn = connect(flag('--server', '127.0.0.1:50051'), process.env.QISTATUS_TOKEN);
  if (command === 'get') {
    const op = await getOperation(conn, argument);
    console.log(JSON.stringify({ kind: op.kind, key: op.key, status: op.status, phase: op.phase }));
  } else if (command === 'list') {
    for (const op of await listByStatus(conn, argument.split(','))) {
      console.log(JSON.stringify({ kind: op.kind, key: op.key, status: op.status }));
    }
  } else if (command === 'watch') {
    const from = flag('--from-sequence');
    const max = Number(flag('--max-changes', 'Infinity'));
    let seen = 0;
    await watch(
      conn,
      { kinds: ['debt'], statuses: ['disbursed', 'canceled'] },
      {
        startAfter: from,
        onChange: (change) => {
          seen += 1;
          const op = change.operation;
          console.log(JSON.stringify({ sequence: Number(change.sequence), key: op.key, status: op.status }));
        },
        onReconnect: (after, err) =>
          console.error(`qistatus: ${err.details || err.message}; resuming after sequence ${after}`),
        shouldStop: () => seen >= max,
      },
    );
  } else {
    console.error('usage: node example.js get KEY | list STATUS[,...] | watch [--from-sequence N]');
    process.exit(2);
  }
  conn.client.close();
}

main().catch((err) => {
  console.error(`qistatus: ${err.details || err.message}`);
  process.exit(1);
});
