// A small qistatus client for Node.js: the services are loaded from ../../proto at run time
// with @grpc/proto-loader, so nothing is generated or checked in.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');

const definition = protoLoader.loadSync(
  ['qistatus/v1/qistatus.proto', 'qistatus/v1/maintenance.proto'],
  {
    includeDirs: [PROTO_DIR],
    // Field names as in the proto (`start_after_sequence`), 64-bit numbers as strings
    // (sequences may pass 2^53), enums by name.
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const v1 = grpc.loadPackageDefinition(definition).qistatus.v1;

/** Connects to a qistatus server at `address` (`host:port`); `token` for --grpc-token-file. */
function connect(address, token) {
  const credentials = grpc.credentials.createInsecure();
  const options = {};
  const client = new v1.OperationStatusService(address, credentials, options);
  const metadata = () => {
    const m = new grpc.Metadata();
    if (token) m.set('authorization', `Bearer ${token}`);
    return m;
  };
  return { client, metadata };
}

/** The operation with `key` (and `kind` when the key names several). */
function getOperation({ client, metadata }, key, kind = '') {
  return new Promise((resolve, reject) => {
    client.GetOperation({ key, kind }, metadata(), (err, response) =>
      err ? reject(err) : resolve(response.operation),
    );
  });
}

/** Every operation in one of `statuses`, following pages. */
async function listByStatus({ client, metadata }, statuses, kind = '') {
  const operations = [];
  let page_token = '';
  do {
    const page = await new Promise((resolve, reject) => {
      client.ListByStatus(
        { statuses, kind, page_size: 2, page_token },
        metadata(),
        (err, response) => (err ? reject(err) : resolve(response)),
      );
    });
    operations.push(...page.operations);
    page_token = page.next_page_token;
  } while (page_token);
  return operations;
}

/** gRPC codes that retrying cannot fix: the watch ends with the error. */
const FINAL = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.OUT_OF_RANGE,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNIMPLEMENTED,
]);

/**
 * Watches changes matching `filter`, resuming after the last sequence seen (and on the same
 * store) whenever the stream breaks. Calls `onChange(change)` for each change and
 * `onReconnect(after, error)` before each retry; resolves when `shouldStop()` says so after
 * a change, rejects on an error retrying cannot fix.
 */
function watch(conn, filter, { startAfter, onChange, onReconnect, shouldStop }) {
  let resume = startAfter;
  let storeId = '';
  let delay = 100;
  return new Promise((resolve, reject) => {
    const open = () => {
      const request = { ...filter, store_id: storeId };
      if (resume !== undefined) request.start_after_sequence = String(resume);
      const call = conn.client.WatchOperation(request, conn.metadata());
      let done = false;
      call.on('data', (message) => {
        delay = 100;
        if (message.progress) {
          resume = message.progress.sequence;
          if (message.progress.store_id) storeId = message.progress.store_id;
        } else if (message.change) {
          if (!message.change.initial) resume = message.change.sequence;
          onChange(message.change);
          if (shouldStop()) {
            done = true;
            call.cancel();
            resolve();
          }
        }
      });
      call.on('error', (err) => {
        if (done) return;
        if (FINAL.has(err.code)) {
          reject(err);
          return;
        }
        onReconnect(resume, err);
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 5000);
      });
    };
    open();
  });
}

module.exports = { connect, getOperation, listByStatus, watch, v1 };
