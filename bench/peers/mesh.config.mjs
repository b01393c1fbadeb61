// GraphQL Mesh compose settings of the peer benchmark (mesh-compose --config-path).
//
// Composes the plain REST CRM and ERP fakes into one supergraph, each from the
// OpenAPI description it serves at /openapi.json. Every operation becomes a root
// field named by its operationId (listAccounts, getAccount, listOrders, ...).
// Types get the prefix Crm or Erp, because both descriptions declare Error,
// PageMeta and PageLinks. Hive Gateway serves the result with the joins of
// gateway-rest.config.mjs.
//
// The addresses come from the environment at compose time. The API keys are
// written into the supergraph as {env.NAME} and read by the gateway at run time,
// so the supergraph file contains no secret.
//
//   FONTE_BENCH_REST_CRM_URL=http://127.0.0.1:N FONTE_BENCH_REST_ERP_URL=http://127.0.0.1:M \
//     node_modules/.bin/mesh-compose --config-path mesh.config.mjs --output FILE

import { createPrefixTransform, defineConfig } from '@graphql-mesh/compose-cli';
import { loadOpenAPISubgraph } from '@omnigraph/openapi';

function restSubgraph(name, prefix, urlVariable, keyVariable) {
  const url = process.env[urlVariable];
  if (!url) {
    throw new Error(`mesh.config.mjs: ${urlVariable} is not set; set it to the base URL of the ` +
      `REST ${name.toUpperCase()} fake, such as http://127.0.0.1:8001`);
  }
  return {
    sourceHandler: loadOpenAPISubgraph(name, {
      source: `${url}/openapi.json`,
      endpoint: `${url}/api/v1`,
      operationHeaders: {
        // The fakes read the key from X-API-Key first. The caller's Authorization
        // header goes along, as the peers send it to their subgraphs, so requests
        // of different callers differ and the gateway cannot share one upstream
        // response between them.
        'X-API-Key': `{env.${keyVariable}}`,
        Authorization: '{context.headers.authorization}',
      },
    }),
    transforms: [createPrefixTransform({ value: prefix, includeRootOperations: false })],
  };
}

export const composeConfig = defineConfig({
  subgraphs: [
    restSubgraph('crm', 'Crm', 'FONTE_BENCH_REST_CRM_URL', 'FONTE_BENCH_REST_CRM_KEY'),
    restSubgraph('erp', 'Erp', 'FONTE_BENCH_REST_ERP_URL', 'FONTE_BENCH_REST_ERP_KEY'),
  ],
});
