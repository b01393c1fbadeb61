// Serve the CRM and ERP GraphQL subgraphs (Apollo Federation 2) for the peer benchmark.
//
// Both subgraphs serve one JSON export of the demo data set, written by bench/run
// from Fonte's own responses, so every gateway returns the same values. Each
// subgraph waits its injected latency before it executes a request, and counts its
// requests. GET /requests on the control port returns the counts, and DELETE resets them.
//
//   node subgraphs.mjs --data FILE --crm-port N --erp-port N --control-port N
//                      [--crm-latency-ms 0] [--erp-latency-ms 0]

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { parse } from 'graphql';

const peersDir = dirname(fileURLToPath(import.meta.url));
const { values: options } = parseArgs({
  options: {
    data: { type: 'string' },
    'crm-port': { type: 'string' },
    'erp-port': { type: 'string' },
    'control-port': { type: 'string' },
    'crm-latency-ms': { type: 'string', default: '0' },
    'erp-latency-ms': { type: 'string', default: '0' },
  },
});
for (const name of ['data', 'crm-port', 'erp-port', 'control-port']) {
  if (options[name] === undefined) {
    console.error(`subgraphs.mjs: missing --${name}; see the usage at the top of the file`);
    process.exit(2);
  }
}

const data = JSON.parse(readFileSync(options.data, 'utf8'));
const customers = data.customers;
const customersById = new Map(customers.map((customer) => [customer.id, customer]));
const customersByErpNumber = new Map(customers.map((customer) => [customer.erpNumber, customer]));
const erpByNumber = new Map(Object.entries(data.erp));
const counts = { crm: 0, erp: 0 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const firstOf = (list, first) => (list == null || first == null ? list : list.slice(0, first));
const cursorOf = (index) => Buffer.from(`customer:${index}`).toString('base64');

function indexAfter(cursor) {
  if (cursor == null) return 0;
  const text = Buffer.from(cursor, 'base64').toString('utf8');
  const match = /^customer:(\d+)$/.exec(text);
  if (match === null) throw new Error(`invalid cursor ${JSON.stringify(cursor)}`);
  return Number(match[1]) + 1;
}

const crmResolvers = {
  Query: {
    customer: (_, { id }) => customersById.get(id) ?? null,
    customers: (_, { first, after }) => {
      const start = indexAfter(after);
      const page = customers.slice(start, start + first);
      return {
        edges: page.map((node, offset) => ({ node, cursor: cursorOf(start + offset) })),
        pageInfo: {
          hasNextPage: start + first < customers.length,
          endCursor: page.length ? cursorOf(start + page.length - 1) : null,
        },
      };
    },
  },
  Customer: {
    __resolveReference: (reference) =>
      (reference.id !== undefined
        ? customersById.get(reference.id)
        : customersByErpNumber.get(reference.erpNumber)) ?? null,
  },
};

const erpResolvers = {
  Customer: {
    __resolveReference: (reference) => {
      const record = erpByNumber.get(reference.erpNumber);
      return record === undefined ? null : { erpNumber: reference.erpNumber, ...record };
    },
    orders: (customer, { first }) => firstOf(customer.orders, first),
    invoices: (customer, { first }) => firstOf(customer.invoices, first),
  },
  Order: {
    shipments: (order, { first }) => firstOf(order.shipments, first),
  },
};

// Delays and counts every GraphQL request before it executes.
function latencyPlugin(name, latencyMs) {
  return {
    async requestDidStart() {
      counts[name] += 1;
      if (latencyMs > 0) await sleep(latencyMs);
    },
  };
}

async function startSubgraph(name, resolvers, port, latencyMs) {
  const typeDefs = parse(readFileSync(join(peersDir, 'subgraphs', `${name}.graphql`), 'utf8'));
  const server = new ApolloServer({
    schema: buildSubgraphSchema({ typeDefs, resolvers }),
    plugins: [latencyPlugin(name, latencyMs)],
  });
  const { url } = await startStandaloneServer(server, { listen: { host: '127.0.0.1', port } });
  console.error(`subgraph ${name} at ${url}, latency ${latencyMs} ms`);
}

await startSubgraph('crm', crmResolvers, Number(options['crm-port']),
  Number(options['crm-latency-ms']));
await startSubgraph('erp', erpResolvers, Number(options['erp-port']),
  Number(options['erp-latency-ms']));

createServer((request, response) => {
  if (request.url !== '/requests') {
    response.writeHead(404).end();
    return;
  }
  if (request.method === 'DELETE') {
    counts.crm = 0;
    counts.erp = 0;
    response.writeHead(204).end();
    return;
  }
  response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(counts));
}).listen(Number(options['control-port']), '127.0.0.1');
