// Serve Apollo Gateway over a composed supergraph, in one Node process.
//
//   NODE_ENV=production node apollo.mjs --supergraph FILE --port N

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { ApolloGateway } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';

const { values: options } = parseArgs({
  options: { supergraph: { type: 'string' }, port: { type: 'string' } },
});
if (options.supergraph === undefined || options.port === undefined) {
  console.error('apollo.mjs: usage: node apollo.mjs --supergraph FILE --port N');
  process.exit(2);
}

const gateway = new ApolloGateway({ supergraphSdl: readFileSync(options.supergraph, 'utf8') });
const server = new ApolloServer({ gateway });
const { url } = await startStandaloneServer(server, {
  listen: { host: '127.0.0.1', port: Number(options.port) },
});
console.error(`Apollo Gateway at ${url}`);
