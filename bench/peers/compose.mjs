// Compose the supergraph SDL of the CRM and ERP subgraphs with Apollo's composition
// library, for Apollo Gateway and Hive Gateway alike.
//
//   node compose.mjs --crm-url URL --erp-url URL --output FILE

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { composeServices } from '@apollo/composition';
import { parse } from 'graphql';

const peersDir = dirname(fileURLToPath(import.meta.url));
const { values: options } = parseArgs({
  options: {
    'crm-url': { type: 'string' },
    'erp-url': { type: 'string' },
    output: { type: 'string' },
  },
});
for (const name of ['crm-url', 'erp-url', 'output']) {
  if (options[name] === undefined) {
    console.error(`compose.mjs: missing --${name}; see the usage at the top of the file`);
    process.exit(2);
  }
}

const services = ['crm', 'erp'].map((name) => ({
  name,
  url: options[`${name}-url`],
  typeDefs: parse(readFileSync(join(peersDir, 'subgraphs', `${name}.graphql`), 'utf8')),
}));
const result = composeServices(services);
if (result.errors) {
  for (const error of result.errors) console.error(`composition failed: ${error.message}`);
  process.exit(1);
}
writeFileSync(options.output, result.supergraphSdl);
