// Unimeter from Node.js: the free-tier alert, end to end, over the public gRPC API.
//
// Loads the repository's .proto files at run time (@grpc/proto-loader, no code generation), then:
// creates a COUNT metric with a threshold, subscribes to its alerts (in batches), ingests four
// events (one a retry, recognised as a duplicate by its event_id), queries the current period and
// waits for the alert the third event triggered. Every number is checked; any mismatch exits 1 with a message.
//
//   UNIMETER_ADDR      host:port of a node's gRPC API (default 127.0.0.1:50051)
//   UNIMETER_API_KEY   sent as "authorization: Bearer <key>" when set
//   UNIMETER_TLS_CA    PEM root certificate: connect with TLS when set
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const CALL_TIMEOUT_MS = 10_000;
const OVERALL_TIMEOUT_MS = 30_000;

// keepCase: fields by their proto names (account_id); longs as strings: 64-bit values stay exact.
const definition = protoLoader.loadSync(
  ['metrics_service', 'ingest_service', 'query_service', 'alert_service'].map((n) => `unimeter/v1/${n}.proto`),
  { includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).unimeter.v1;

const addr = process.env.UNIMETER_ADDR || '127.0.0.1:50051';
const credentials = process.env.UNIMETER_TLS_CA
  ? grpc.credentials.createSsl(fs.readFileSync(process.env.UNIMETER_TLS_CA))
  : grpc.credentials.createInsecure();

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.UNIMETER_API_KEY) md.set('authorization', `Bearer ${process.env.UNIMETER_API_KEY}`);
  return md;
}

// One channel for every service.
const metrics = new v1.MetricsService(addr, credentials);
const shared = { channelOverride: metrics.getChannel() };
const ingest = new v1.IngestService(addr, credentials, shared);
const query = new v1.QueryService(addr, credentials, shared);
const alerts = new v1.AlertService(addr, credentials, shared);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, response) =>
      err ? reject(new Error(`${method}: ${grpc.status[err.code]}: ${err.details}`)) : resolve(response),
    );
  });
}

function expect(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
  }
}

async function next(iterator, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${CALL_TIMEOUT_MS} ms`)), CALL_TIMEOUT_MS);
  });
  try {
    const { value, done } = await Promise.race([iterator.next(), timeout]);
    if (done) throw new Error(`the alert stream ended before the ${what}`);
    return value;
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  console.log(`server ${addr}`);
  // A fresh code per run, so the example can run again against the same server.
  const code = `node_api_calls_${Date.now().toString(36)}`;
  const account = '42';

  const { metric } = await call(metrics, 'CreateMetric', {
    metric: { code, agg_type: 'AGG_TYPE_COUNT', thresholds: [{ code: 'free_tier_exceeded', value: 3 }] },
  });
  expect('stored metric', [metric.code, metric.agg_type, metric.thresholds[0].value], [code, 'AGG_TYPE_COUNT', '3']);
  console.log(`created metric ${code}: COUNT, threshold free_tier_exceeded at 3`);

  // Subscribe before ingesting: the first message is a heartbeat, sent once the stream is live.
  // Alerts that are ready together come as one `batch` message of up to 256: a subscriber that
  // asks for them one a message falls behind a burst (docs/cli.md, "Bursts").
  const stream = alerts.AlertSubscribe({ metric_codes: [code], max_alerts_per_message: 256 }, metadata());
  stream.on('error', () => {}); // errors reach the iterator below; this keeps a late cancel quiet
  const messages = stream[Symbol.asyncIterator]();
  const hello = await next(messages, 'first heartbeat');
  expect('first message kind', hello.kind, 'heartbeat');
  console.log('subscribed to alerts');

  const events = ['req-1', 'req-2', 'req-3', 'req-3'].map((event_id) => ({
    account_id: account,
    metric_code: code,
    value: 1,
    event_id,
  }));
  const ingested = await call(ingest, 'Ingest', { events });
  expect('stored, duplicates', [ingested.n_stored, ingested.n_duplicates], [3, 1]);
  const offsets = ingested.offsets.map(BigInt);
  if (!(offsets[0] < offsets[1] && offsets[1] < offsets[2] && offsets[3] === offsets[2])) {
    throw new Error(`offsets: expected three increasing offsets and the retry's equal to the third, got ${offsets}`);
  }
  console.log(`ingested 4 events: stored ${ingested.n_stored}, duplicates ${ingested.n_duplicates}`);

  const usage = await call(query, 'Query', {
    account_id: account,
    metric_code: code,
    period_selector: 'PERIOD_SELECTOR_CURRENT',
  });
  expect('query value, count', [usage.value.value, usage.value.count], ['3', '3']);
  console.log(`query (current period): value ${usage.value.value}, count ${usage.value.count}`);

  let message = await next(messages, 'alert');
  while (message.kind === 'heartbeat') message = await next(messages, 'alert');
  expect('alert message kind', message.kind, 'batch');
  expect('alerts in the batch', message.batch.alerts.length, 1);
  const a = message.batch.alerts[0];
  expect(
    'alert',
    [a.account_id, a.metric_code, a.threshold_code, a.threshold_value, a.multiple, a.value_at_cross],
    [account, code, 'free_tier_exceeded', '3', '1', '3'],
  );
  console.log(
    `alert: account ${a.account_id} crossed ${a.threshold_code} (${a.threshold_value}) ` +
      `with value ${a.value_at_cross}, partition ${a.partition} offset ${a.offset}`,
  );
  stream.cancel();
  console.log('ok');
}

const watchdog = setTimeout(() => {
  console.error(`error: not done within ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    metrics.close();
    process.exit(0);
  },
  (err) => {
    console.error(`error: ${err.message}`);
    process.exit(1);
  },
);
