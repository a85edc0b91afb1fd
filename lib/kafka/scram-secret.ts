import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { FilterError } from '../types.ts';

/** SASL/SCRAM credentials as kafkajs takes them (and lib/kafka/client.ts's KafkaAuth). */
export interface ScramCredentials {
  readonly mechanism: 'scram-sha-512';
  readonly username: string;
  readonly password: string;
}

/**
 * A SCRAM secret's value: JSON with string `username` and `password` (the shape MSK's SCRAM secrets have), read the
 * same way by the worker, the topic provisioner and the lag probe.
 */
export function parseScramSecret(secretString: string | undefined, secretArn: string): ScramCredentials {
  let parsed: unknown;
  try {
    parsed = JSON.parse(secretString ?? '');
  } catch {
    parsed = undefined;
  }
  const o = parsed as { username?: unknown; password?: unknown } | null | undefined;
  if (typeof o?.username !== 'string' || typeof o.password !== 'string') {
    throw new FilterError('kafka_secret_invalid', 'the SCRAM secret must be JSON {"username","password"} (strings)', {
      secretArn,
    });
  }
  return { mechanism: 'scram-sha-512', username: o.username, password: o.password };
}

/** Reads the secret from Secrets Manager (its KMS key, if customer-managed, must allow kms:Decrypt to the caller). */
export async function readScramSecret(secretArn: string, region?: string): Promise<ScramCredentials> {
  const sm = new SecretsManagerClient(region ? { region } : {});
  try {
    const out = await sm.send(new GetSecretValueCommand({ SecretId: secretArn }));
    return parseScramSecret(out.SecretString, secretArn);
  } finally {
    sm.destroy();
  }
}
