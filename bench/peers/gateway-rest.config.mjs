// Hive Gateway settings of the peer benchmark over the plain REST fakes (hive-rest).
//
// The supergraph comes from mesh.config.mjs: GraphQL Mesh composed it from the
// OpenAPI descriptions of the REST CRM and ERP, one root field per operation.
// This file adds Fonte's types on top (Customer, Order, Shipment, Invoice and the
// customer connection, with Fonte's field names) and the joins between them.
// Their resolvers call the REST operations through Mesh's in-context SDK
// (context.crm.Query.listAccounts(...)), so every upstream request goes through
// the gateway's REST transport.
//
// Values are converted to Fonte's output: money as a string with two decimals,
// date-times in ISO 8601 with +00:00, as Fonte's Decimal and DateTime scalars
// return them. The reads follow Fonte's declared joins:
//
// - a customer's ERP partner and bank account by the account's ERP number;
// - a customer's orders, newest first; posted customer invoices and credit
//   notes, newest first;
// - an order's outgoing shipments, latest scheduled first.
//
// Each relation is read once per nesting level for all parents of a request,
// with every page of the result, as Fonte reads it.

import { defineConfig } from '@graphql-hive/gateway';

// The REST fakes return at most 500 rows per page.
const PAGE_SIZE = 500;

const typeDefs = /* GraphQL */ `
  scalar Decimal

  type Customer {
    id: ID!
    erpNumber: String
    name: String
    vatNumber: String
    pec: String
    phone: String
    street: String
    city: String
    postalCode: String
    province: String
    region: String
    industry: String
    creditLimit: Decimal
    openBalance: Decimal
    iban: String
    orders(first: Int): [Order!]
    invoices(first: Int): [Invoice!]
  }

  # Date-times are typed String here: the supergraph's DateTime scalar, which the
  # OpenAPI loader declared, would write them in its own format.
  type Order {
    id: ID!
    number: String
    orderDate: String
    promisedDate: String
    status: String
    amountTotal: Decimal
    shipments(first: Int): [Shipment!]
  }

  type Shipment {
    id: ID!
    reference: String
    status: String
    scheduledDate: String
    promisedDate: String
    carrier: String
  }

  type Invoice {
    id: ID!
    number: String
    invoiceDate: String
    dueDate: String
    amountTotal: Decimal
    amountResidual: Decimal
    paymentStatus: String
  }

  type CustomerConnection {
    edges: [CustomerEdge!]!
    pageInfo: PageInfo!
  }

  type CustomerEdge {
    cursor: String!
    node: Customer!
  }

  type PageInfo {
    hasNextPage: Boolean!
    endCursor: String
  }

  extend type Query {
    customer(id: ID!): Customer
    customers(first: Int! = 50, after: String): CustomerConnection
  }
`;

const ACCOUNT_FIELDS = `id erp_customer_number name vat_number pec_email phone street city
  postal_code province region industry`;

// NOTE: toFixed rounds the binary float, while Fonte rounds its shortest decimal form
// half to even. They agree on amounts with at most two decimals, as the demo's are.
function money(value) {
  return value == null ? null : Number(value).toFixed(2);
}

// The fakes send second precision in UTC, so the milliseconds dropped here are zero.
function moment(value) {
  return value == null ? null : `${new Date(value).toISOString().slice(0, 19)}+00:00`;
}

function day(value) {
  return value == null ? null : String(value).slice(0, 10);
}

const cursorOf = (index) => Buffer.from(`customer:${index}`).toString('base64');

function indexAfter(cursor) {
  if (cursor == null) return 0;
  const match = /^customer:(\d+)$/.exec(Buffer.from(cursor, 'base64').toString('utf8'));
  if (match === null) throw new Error(`invalid cursor ${JSON.stringify(cursor)}; pass an endCursor`);
  return Number(match[1]) + 1;
}

function customerOf(account) {
  return {
    id: account.id,
    erpNumber: account.erp_customer_number,
    name: account.name,
    vatNumber: account.vat_number,
    pec: account.pec_email,
    phone: account.phone,
    street: account.street,
    city: account.city,
    postalCode: account.postal_code,
    province: account.province,
    region: account.region,
    industry: account.industry,
  };
}

// Return the page of a REST list operation, or raise with the API's error.
function rowsOf(page, operation) {
  if (page?.data == null) {
    const error = page?.error;
    throw new Error(`${operation} failed: ${error ? `${error.code}: ${error.message}` : 'no data'}`);
  }
  return page;
}

// Read every page of the list operation `operation` of the ERP, whose rows are
// of the OpenAPI schema `schema`.
async function readAll(context, info, operation, args, schema, fields) {
  const selectionSet = `{
    ... on Erp${schema}Page { data { ${fields} } meta { next_cursor } }
    ... on ErpError { error { code message } }
  }`;
  const call = (callArgs) => context.erp.Query[operation]({
    root: {}, args: callArgs, context, info, selectionSet,
  });
  const rows = [];
  let page = rowsOf(await call({ ...args, limit: PAGE_SIZE }), operation);
  rows.push(...page.data);
  while (page.meta?.next_cursor) {
    page = rowsOf(await call({ cursor: page.meta.next_cursor, limit: PAGE_SIZE }), operation);
    rows.push(...page.data);
  }
  return rows;
}

// Batches the keys that one request's resolvers ask for in the same turn of the
// event loop into one call of `readMany(keys, info)`, which returns a Map from key
// to value. Each request has its own batches, kept on its context object.
const batchesByContext = new WeakMap();

function load(context, info, name, key, readMany) {
  let batches = batchesByContext.get(context);
  if (batches === undefined) {
    batches = new Map();
    batchesByContext.set(context, batches);
  }
  let batch = batches.get(name);
  if (batch === undefined || batch.closed) {
    const keys = new Set();
    batch = { closed: false, keys };
    batch.result = new Promise((resolve) => setImmediate(resolve)).then(() => {
      batch.closed = true;
      return readMany([...keys], info);
    });
    batches.set(name, batch);
  }
  batch.keys.add(key);
  return batch.result.then((values) => values.get(key));
}

function groupBy(rows, field) {
  const groups = new Map();
  for (const row of rows) {
    const key = String(row[field]);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(row);
  }
  return groups;
}

const firstOf = (list, first) => (list == null || first == null ? list : list.slice(0, first));

function numbers(keys) {
  return keys.filter((key) => key != null).map(Number);
}

const readPartners = (context) => async (keys, info) => {
  const rows = await readAll(context, info, 'listCustomers',
    { ids: numbers(keys), fields: ['credit_limit', 'balance'] }, 'Customer',
    'id credit_limit balance');
  return new Map(rows.map((row) => [String(row.id), row]));
};

const readBankAccounts = (context) => async (keys, info) => {
  const rows = await readAll(context, info, 'listBankAccounts',
    { customer_id: numbers(keys), fields: ['customer_id', 'iban'] }, 'BankAccount',
    'id customer_id iban');
  const groups = groupBy(rows, 'customer_id');
  return new Map([...groups].map(([key, list]) => [key, list[0]]));
};

const readOrders = (context) => async (keys, info) => {
  const rows = await readAll(context, info, 'listOrders',
    { customer_id: numbers(keys), sort: ['_ordered_at', '_id'] }, 'Order',
    'id customer_id number ordered_at promised_at status amount_total');
  return groupBy(rows, 'customer_id');
};

const readInvoices = (context) => async (keys, info) => {
  const rows = await readAll(context, info, 'listInvoices',
    { customer_id: numbers(keys), kind: ['out_invoice', 'out_refund'], status: ['posted'],
      sort: ['_invoice_date', '_id'] }, 'Invoice',
    'id customer_id number invoice_date due_date amount_total amount_due payment_status');
  return groupBy(rows, 'customer_id');
};

const readShipments = (context) => async (keys, info) => {
  const rows = await readAll(context, info, 'listShipments',
    { order_id: numbers(keys), kind: ['outgoing'], sort: ['_scheduled_at', '_id'] },
    'Shipment', 'id order_id reference status scheduled_at deadline carrier');
  return groupBy(rows, 'order_id');
};

const partner = (customer, context, info) =>
  load(context, info, 'partners', customer.erpNumber, readPartners(context));

const resolvers = {
  Query: {
    customer: async (_, { id }, context, info) => {
      const item = await context.crm.Query.getAccount({
        root: {}, args: { id }, context, info,
        selectionSet: `{ ... on CrmAccountItem { data { ${ACCOUNT_FIELDS} } }
                         ... on CrmError { error { status code message } } }`,
      });
      if (item?.data != null) return customerOf(item.data);
      if (item?.error?.status === 404) return null;
      throw new Error(`getAccount failed: ${item?.error?.code}: ${item?.error?.message}`);
    },
    customers: async (_, { first, after }, context, info) => {
      const start = indexAfter(after);
      const page = rowsOf(await context.crm.Query.listAccounts({
        root: {}, args: { offset: start, limit: first }, context, info,
        selectionSet: `{ ... on CrmAccountPage { data { ${ACCOUNT_FIELDS} } meta { next_cursor } }
                         ... on CrmError { error { code message } } }`,
      }), 'listAccounts');
      const edges = page.data.map((account, offset) => ({
        node: customerOf(account), cursor: cursorOf(start + offset),
      }));
      return {
        edges,
        pageInfo: {
          hasNextPage: page.meta.next_cursor != null,
          endCursor: edges.length ? edges[edges.length - 1].cursor : null,
        },
      };
    },
  },
  Customer: {
    creditLimit: async (customer, _, context, info) =>
      money((await partner(customer, context, info))?.credit_limit),
    openBalance: async (customer, _, context, info) =>
      money((await partner(customer, context, info))?.balance),
    iban: async (customer, _, context, info) => {
      const account = await load(context, info, 'bank-accounts', customer.erpNumber,
        readBankAccounts(context));
      return account?.iban ?? null;
    },
    orders: async (customer, { first }, context, info) => {
      const rows = await load(context, info, 'orders', customer.erpNumber, readOrders(context));
      return firstOf(rows ?? [], first);
    },
    invoices: async (customer, { first }, context, info) => {
      const rows = await load(context, info, 'invoices', customer.erpNumber,
        readInvoices(context));
      return firstOf(rows ?? [], first);
    },
  },
  Order: {
    id: (order) => String(order.id),
    orderDate: (order) => moment(order.ordered_at),
    promisedDate: (order) => moment(order.promised_at),
    amountTotal: (order) => money(order.amount_total),
    shipments: async (order, { first }, context, info) => {
      const rows = await load(context, info, 'shipments', String(order.id),
        readShipments(context));
      return firstOf(rows ?? [], first);
    },
  },
  Shipment: {
    id: (shipment) => String(shipment.id),
    scheduledDate: (shipment) => moment(shipment.scheduled_at),
    promisedDate: (shipment) => moment(shipment.deadline),
  },
  Invoice: {
    id: (invoice) => String(invoice.id),
    invoiceDate: (invoice) => day(invoice.invoice_date),
    dueDate: (invoice) => day(invoice.due_date),
    amountTotal: (invoice) => money(invoice.amount_total),
    amountResidual: (invoice) => money(invoice.amount_due),
    paymentStatus: (invoice) => invoice.payment_status,
  },
};

export const gatewayConfig = defineConfig({
  additionalTypeDefs: typeDefs,
  additionalResolvers: resolvers,
});
