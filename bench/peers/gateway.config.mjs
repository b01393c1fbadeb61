// Hive Gateway settings of the peer benchmark (hive-gateway --config-path).
//
// The caller's Authorization header goes on to every subgraph, as a deployment
// that authorises in its subgraphs would do. Subgraph requests of different
// callers then differ, so the gateway cannot serve one caller's request with
// another caller's upstream response.
import { defineConfig } from '@graphql-hive/gateway';

export const gatewayConfig = defineConfig({
  propagateHeaders: {
    fromClientToSubgraphs: ({ request }) => ({
      authorization: request.headers.get('authorization') ?? undefined,
    }),
  },
});
