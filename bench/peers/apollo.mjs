// Serve Apollo Gateway over a composed supergraph, in one Node process.
//
// The caller's Authorization header goes on to every subgraph, as a deployment
// that authorises in its subgraphs would do, and as the Hive Gateway settings of
// gateway.config.mjs do.
//
//   NODE_ENV=production node apollo.mjs --supergraph FILE --port N

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { ApolloGateway, RemoteGraphQLDataSource } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';

const { values: options } = parseArgs({
  options: { supergraph: { type: 'string' }, port: { type: 'string' } },
});
if (options.supergraph === undefined || options.port === undefined) {
  console.error('apollo.mjs: missing --supergraph or --port. Usage: node apollo.mjs --supergraph FILE --port N');
  process.exit(2);
}

class ForwardingDataSource extends RemoteGraphQLDataSource {
  willSendRequest({ request, context }) {
    if (context.authorization) request.http.headers.set('authorization', context.authorization);
  }
}

const gateway = new ApolloGateway({
  supergraphSdl: readFileSync(options.supergraph, 'utf8'),
  buildService: ({ url }) => new ForwardingDataSource({ url }),
});
const server = new ApolloServer({ gateway });
const { url } = await startStandaloneServer(server, {
  listen: { host: '127.0.0.1', port: Number(options.port) },
  context: async ({ req }) => ({ authorization: req.headers.authorization }),
});
console.error(`Apollo Gateway at ${url}`);
