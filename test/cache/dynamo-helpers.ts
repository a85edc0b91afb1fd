/**
 * The local DynamoDB server (scripts/services.sh's `dynamodb`, a moto server on 127.0.0.1:8000) as the score cache
 * tests use it: a client, and a fresh table of the layout lib/cache/dynamo-store.ts documents (the construct's).
 */
import {
  CreateTableCommand,
  DynamoDBClient,
  waitUntilTableExists,
  type AttributeValue,
  GetItemCommand,
  ScanCommand,
} from '@aws-sdk/client-dynamodb';
import { CREDENTIALS, DYNAMODB_ENDPOINT, REGION, uniq } from '../stream/helpers.ts';

export { DYNAMODB_ENDPOINT };

export function dynamoClient(): DynamoDBClient {
  return new DynamoDBClient({ region: REGION, credentials: CREDENTIALS, endpoint: DYNAMODB_ENDPOINT });
}

/** Creates a table with a unique name (pk/sk strings, on demand) and waits until it is ACTIVE. */
export async function createCacheTable(client: DynamoDBClient, prefix = 'mlmf-cache'): Promise<string> {
  const table = uniq(prefix);
  await client.send(
    new CreateTableCommand({
      TableName: table,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
    }),
  );
  await waitUntilTableExists({ client, maxWaitTime: 30 }, { TableName: table });
  return table;
}

/** The raw item of a key, as stored. */
export async function rawItem(client: DynamoDBClient, table: string, pk: string, sk: string) {
  const res = await client.send(new GetItemCommand({ TableName: table, Key: { pk: { S: pk }, sk: { S: sk } } }));
  return res.Item;
}

/** Every item of the table whose pk starts with `prefix`. */
export async function itemsOf(client: DynamoDBClient, table: string, prefix: string) {
  const items: Record<string, AttributeValue>[] = [];
  let start: Record<string, AttributeValue> | undefined;
  do {
    const page = await client.send(
      new ScanCommand({ TableName: table, ExclusiveStartKey: start, ConsistentRead: true }),
    );
    items.push(...(page.Items ?? []).filter((i) => i.pk?.S?.startsWith(prefix)));
    start = page.LastEvaluatedKey;
  } while (start);
  return items;
}
