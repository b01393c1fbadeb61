// Drive one workload against one gateway with autocannon and print the results as JSON.
//
// Each connection is one virtual user with its own bearer token (the i-th
// connection takes the i-th token of --tokens), so no gateway can share work
// between callers. Every response is checked: non-200 statuses and 200 responses
// whose body has a top-level "errors" member are counted apart. Without --rate the
// connections send as fast as the gateway answers (saturation); with --rate they
// send that many requests per second in total (fixed rate).
//
//   node load.mjs --url URL --body FILE --tokens FILE --connections N --duration S
//                 [--rate REQUESTS_PER_SECOND]
//
// Output on stdout: {"requests", "duration_s", "requests_per_s", "latency_ms":
// {"p50", "p95", "p99", "max"}, "non_200", "with_errors", "timeouts", "socket_errors"}.
// Latencies are in milliseconds, percentiles by nearest rank over all responses.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    body: { type: 'string' },
    tokens: { type: 'string' },
    connections: { type: 'string', default: '16' },
    duration: { type: 'string', default: '10' },
    rate: { type: 'string' },
  },
});
for (const name of ['url', 'body', 'tokens']) {
  if (options[name] === undefined) {
    console.error(`load.mjs: missing --${name}; see the usage at the top of the file`);
    process.exit(2);
  }
}

const body = readFileSync(options.body, 'utf8');
const tokens = JSON.parse(readFileSync(options.tokens, 'utf8'));
const connections = Number(options.connections);
if (tokens.length < connections) {
  console.error(`load.mjs: ${tokens.length} tokens for ${connections} connections; ` +
    'pass one token per connection');
  process.exit(2);
}

let nextToken = 0;
let non200 = 0;
let withErrors = 0;
const latencies = [];

function nearestRank(sorted, percent) {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((percent / 100) * sorted.length);
  return sorted[Math.max(rank, 1) - 1];
}

const instance = autocannon({
  url: options.url,
  connections,
  duration: Number(options.duration),
  overallRate: options.rate === undefined ? undefined : Number(options.rate),
  timeout: 30,
  requests: [{
    method: 'POST',
    setupRequest: (request, context) => {
      if (context.token === undefined) {
        context.token = tokens[nextToken];
        nextToken += 1;
      }
      return {
        ...request,
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${context.token}`,
        },
        body,
      };
    },
    onResponse: (status, responseBody) => {
      if (status !== 200) {
        non200 += 1;
        return;
      }
      // A GraphQL response object has "data" first; "errors" anywhere at the top
      // level means at least one field failed.
      if (responseBody.includes('"errors":')) withErrors += 1;
    },
  }],
});
instance.on('response', (client, statusCode, resBytes, responseTime) => {
  latencies.push(responseTime);
});

instance.on('done', (result) => {
  latencies.sort((a, b) => a - b);
  const durationS = result.duration;
  const round = (value) => (value === null ? null : Math.round(value * 1000) / 1000);
  process.stdout.write(JSON.stringify({
    requests: latencies.length,
    duration_s: durationS,
    requests_per_s: round(latencies.length / durationS),
    latency_ms: {
      p50: round(nearestRank(latencies, 50)),
      p95: round(nearestRank(latencies, 95)),
      p99: round(nearestRank(latencies, 99)),
      max: round(latencies.length ? latencies[latencies.length - 1] : null),
    },
    non_200: non200,
    with_errors: withErrors,
    timeouts: result.timeouts,
    socket_errors: result.errors,
  }) + '\n');
});
