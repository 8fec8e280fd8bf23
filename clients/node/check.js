#!/usr/bin/env node
// CI check: the Node.js client, loaded from proto/, works against a live qistatus server.
//
// Starts the server, gets an operation, lists by status across pages, and runs the watch
// example while the server is restarted under it: every disbursement and cancellation must be
// printed exactly once, in order, with the reconnect reported.
//
//     node check.js --server-bin target/debug/qistatus-server
'use strict';

const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

function flag(name) {
  const i = process.argv.indexOf(name);
  if (i < 0) throw new Error(`${name} is required`);
  return process.argv[i + 1];
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on port ${port}`);
}

async function post(httpPort, webhook) {
  const response = await fetch(`http://127.0.0.1:${httpPort}/webhooks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(webhook),
  });
  if (!response.ok) throw new Error(`POST answered ${response.status}`);
  return response.json();
}

const debt = (key, status, when) => ({ webhook_type: 'debt', key, status, event_datetime: when });

function example(grpcPort, ...args) {
  return execFileSync(process.execPath, [path.join(__dirname, 'example.js'), ...args, '--server', `127.0.0.1:${grpcPort}`], { encoding: 'utf8' });
}

async function main() {
  const serverBin = flag('--server-bin');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qistatus-node-check-'));
  const [httpPort, grpcPort] = [await freePort(), await freePort()];
  const start = async () => {
    const server = spawn(serverBin, [
      '--data-dir', dataDir,
      '--http-addr', `127.0.0.1:${httpPort}`,
      '--grpc-addr', `127.0.0.1:${grpcPort}`,
      '--admin-addr', '127.0.0.1:0',
      '--log', 'warn',
    ], { stdio: 'inherit' });
    await waitForPort(httpPort);
    await waitForPort(grpcPort);
    return server;
  };
  const stop = (server) => new Promise((resolve) => {
    server.once('exit', resolve);
    server.kill('SIGTERM');
  });

  let server = await start();
  let passed = 0;
  const failures = [];
  const check = (name, ok, detail) => (ok ? passed++ : failures.push(`${name}: ${detail}`));
  try {
    await post(httpPort, debt('d1', 'waiting_signature', '2024-01-01 10:00:00'));
    await post(httpPort, debt('d1', 'disbursed', '2024-01-02 10:00:00'));
    await post(httpPort, { webhook_type: 'account', key: 'a1', status: 'account_opened' });
    await post(httpPort, debt('d2', 'canceled ', '2024-01-03 10:00:00'));
    await post(httpPort, debt('d4', 'disbursed', '2024-01-03 11:00:00'));

    const got = JSON.parse(example(grpcPort, 'get', 'd1'));
    check('get', got.status === 'disbursed' && got.phase === 'PHASE_ACTIVE', JSON.stringify(got));

    const listed = example(grpcPort, 'list', 'disbursed,canceled').trim().split('\n').map((l) => JSON.parse(l).key);
    check('list follows pages', JSON.stringify(listed) === JSON.stringify(['d1', 'd2', 'd4']), JSON.stringify(listed));

    const watcher = spawn(process.execPath, [
      path.join(__dirname, 'example.js'), 'watch',
      '--from-sequence', '0', '--max-changes', '4',
      '--server', `127.0.0.1:${grpcPort}`,
    ]);
    let out = '';
    let err = '';
    watcher.stdout.on('data', (d) => { out += d; });
    watcher.stderr.on('data', (d) => { err += d; });
    const exited = new Promise((resolve) => watcher.once('exit', resolve));
    // Once the watcher has printed its first change, restart the server under it.
    while (!out.includes('\n')) await new Promise((r) => setTimeout(r, 20));
    await stop(server);
    server = await start();
    await post(httpPort, debt('d3', 'disbursed', '2024-01-04 10:00:00'));
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 60000))]);
    if (code !== 0) watcher.kill();
    const changes = out.trim().split('\n').map((l) => JSON.parse(l)).map((c) => [c.sequence, c.key, c.status]);
    const expected = [[2, 'd1', 'disbursed'], [4, 'd2', 'canceled'], [5, 'd4', 'disbursed'], [6, 'd3', 'disbursed']];
    check('watch resumes across a restart', code === 0 && JSON.stringify(changes) === JSON.stringify(expected), `exit ${code}, ${JSON.stringify(changes)}\n${err}`);
    check('watch reports its reconnect', err.includes('resuming after sequence'), err);
  } finally {
    await stop(server);
  }
  console.log(`node-client: ${passed} passed, ${failures.length} failed`);
  if (failures.length > 0) {
    console.error(failures.join('\n'));
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
