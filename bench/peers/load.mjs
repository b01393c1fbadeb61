// Drive one workload against one gateway and print the results as JSON.
//
// Each virtual user has its own connection and its own bearer token (user i
// takes the i-th token of --tokens), so no gateway can share work between
// callers. Every response is checked: non-200 statuses and 200 responses whose
// body has an "errors" member are counted apart.
//
// Without --rate the run measures saturation: one autocannon instance per virtual
// user sends its next request as soon as the previous response arrives. autocannon
// keeps its context per request cycle, not per connection, so one instance per
// user is how each connection keeps one token.
//
// With --rate the run is open-loop at a fixed rate: requests start at even
// intervals of 1/rate seconds and go to the users in turn. A request whose user is
// still waiting queues on that user's connection, and its latency counts from its
// scheduled start. autocannon's own rate limit sends each second's requests in one
// burst, which would measure queueing behind the burst, so this mode uses node:http.
//
//   node load.mjs --url URL --body FILE --tokens FILE --connections N --duration S
//                 [--rate REQUESTS_PER_SECOND]
//
// Output on stdout: {"mode", "requests", "duration_s", "requests_per_s", "latency_ms":
// {"p50", "p95", "p99", "max"}, "non_200", "non_200_statuses" (count per status),
// "non_200_sample" (the start of the first such body), "with_errors",
// "errors_sample" (the start of the first "errors" member of a 200 response),
// "timeouts", "socket_errors"}. Latencies are in milliseconds, percentiles by nearest rank over
// all responses.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';

const TIMEOUT_S = 30;

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
const durationS = Number(options.duration);
if (tokens.length < connections) {
  console.error(`load.mjs: ${tokens.length} tokens for ${connections} connections; ` +
    'pass one token per connection');
  process.exit(2);
}

const tally = {
  latencies: [], non200: 0, statuses: {}, sample: null, withErrors: 0, errorsSample: null,
  timeouts: 0, socketErrors: 0,
};

function countResponse(status, responseBody) {
  if (status !== 200) {
    tally.non200 += 1;
    tally.statuses[status] = (tally.statuses[status] ?? 0) + 1;
    tally.sample ??= responseBody.slice(0, 300);
    return;
  }
  // "errors" at any level of a GraphQL response means that a field failed.
  const errorsAt = responseBody.indexOf('"errors":');
  if (errorsAt !== -1) {
    tally.withErrors += 1;
    tally.errorsSample ??= responseBody.slice(errorsAt, errorsAt + 500);
  }
}

function headersFor(token) {
  return { 'content-type': 'application/json', authorization: `Bearer ${token}` };
}

function runUser(token) {
  return new Promise((resolve, reject) => {
    const instance = autocannon({
      url: options.url,
      connections: 1,
      duration: durationS,
      timeout: TIMEOUT_S,
      method: 'POST',
      headers: headersFor(token),
      body,
      requests: [{ onResponse: countResponse }],
    }, (error, result) => (error ? reject(error) : resolve(result)));
    instance.on('response', (client, statusCode, resBytes, responseTime) => {
      tally.latencies.push(responseTime);
    });
  });
}

async function saturate() {
  const results = await Promise.all(tokens.slice(0, connections).map(runUser));
  for (const result of results) {
    tally.timeouts += result.timeouts;
    tally.socketErrors += result.errors - result.timeouts;
  }
  return Math.max(...results.map((result) => result.duration));
}

function sendOnce(agent, token) {
  const scheduled = performance.now();
  return new Promise((resolve) => {
    const request = http.request(options.url, {
      method: 'POST', agent, headers: headersFor(token), timeout: TIMEOUT_S * 1000,
    }, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => {
        tally.latencies.push(performance.now() - scheduled);
        countResponse(response.statusCode, Buffer.concat(chunks).toString('utf8'));
        resolve();
      });
    });
    request.on('timeout', () => {
      tally.timeouts += 1;
      request.destroy(new Error('timed out'));
    });
    request.on('error', () => {
      tally.socketErrors += 1;
      resolve();
    });
    request.end(body);
  });
}

async function fixedRate(rate) {
  const agents = tokens.slice(0, connections).map(
    () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
  const total = Math.round(rate * durationS);
  const start = performance.now();
  const pending = [];
  for (let index = 0; index < total; index += 1) {
    const due = start + (index * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const user = index % connections;
    pending.push(sendOnce(agents[user], tokens[user]));
  }
  await Promise.all(pending);
  for (const agent of agents) agent.destroy();
  return (performance.now() - start) / 1000;
}

function nearestRank(sorted, percent) {
  if (sorted.length === 0) return null;
  return sorted[Math.max(Math.ceil((percent / 100) * sorted.length), 1) - 1];
}

const rate = options.rate === undefined ? null : Number(options.rate);
const elapsedS = rate === null ? await saturate() : await fixedRate(rate);
const latencies = tally.latencies.sort((a, b) => a - b);
const round = (value) => (value === null ? null : Math.round(value * 1000) / 1000);
process.stdout.write(JSON.stringify({
  mode: rate === null ? 'saturation' : 'fixed_rate',
  requests: latencies.length,
  duration_s: round(elapsedS),
  requests_per_s: round(latencies.length / elapsedS),
  latency_ms: {
    p50: round(nearestRank(latencies, 50)),
    p95: round(nearestRank(latencies, 95)),
    p99: round(nearestRank(latencies, 99)),
    max: round(latencies.length ? latencies[latencies.length - 1] : null),
  },
  non_200: tally.non200,
  non_200_statuses: tally.statuses,
  non_200_sample: tally.sample,
  with_errors: tally.withErrors,
  errors_sample: tally.errorsSample,
  timeouts: tally.timeouts,
  socket_errors: tally.socketErrors,
}) + '\n');
