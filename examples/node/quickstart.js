const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(
  ['unimeter/v1/ingest_service.proto', 'unimeter/v1/query_service.proto'],
  { includeDirs: [path.resolve(__dirname, '..', '..', 'proto')], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).unimeter.v1;
const addr = process.env.UNIMETER_ADDR || '127.0.0.1:50051';
const ingest = new v1.IngestService(addr, grpc.credentials.createInsecure());
const query = new v1.QueryService(addr, grpc.credentials.createInsecure());

ingest.Ingest({ events: [{ account_id: 42, metric_code: 'api_calls', value: 1, event_id: 'node-1' }] }, (err, r) => {
  if (err) throw err;
  query.Query({ account_id: 42, metric_code: 'api_calls', period_selector: 'PERIOD_SELECTOR_CURRENT' }, (err, usage) => {
    if (err) throw err;
    console.log(`stored ${r.n_stored}; api_calls this period: ${usage.value.count}`);
  });
});
