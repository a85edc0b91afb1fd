/**
 * The broker-restart scenario shared by broker-restart.test.ts (short outage, default suite) and
 * broker-restart.slow.test.ts (the 10 s restart from the fault loop): the real worker process (the container entry,
 * functions/worker/main.ts, scoring with the committed tiny fixture model) consumes from a private broker that is
 * stopped mid-run and started again on the same log dir. Everything it observes is returned for the tests to assert.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Admin, Kafka } from 'kafkajs';
import type { PrivateKafkaBroker } from './private-broker.ts';
import {
  S3_ENDPOINT,
  createBucket,
  curatedIds,
  makeRecords,
  produce,
  readTopicToEnd,
  s3Client,
  tally,
  uniq,
} from './helpers.ts';
import { waitFor, holdsFor } from '../helpers/poll.ts';
import { WorkerProcess } from './worker-driver.ts';

const WORKER = new URL('../../functions/worker/main.ts', import.meta.url).pathname;
/** The CLI entry (`mlm-filter worker`): it waits for the event loop to end, where the container entry exits. */
const CLI = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const MODEL = new URL('../fixtures/models/tiny-llava-qwen', import.meta.url).pathname;

export interface OutageScenario {
  /** How the broker goes down: SIGTERM is a clean restart, SIGKILL a crash. */
  readonly signal: 'SIGTERM' | 'SIGKILL';
  /** How long the broker stays down before it is started again, ms. */
  readonly outageMs: number;
  /** Records produced before the outage and after it. */
  readonly before: number;
  readonly after: number;
}

export interface OutageRun {
  /** Every record id, and the ones that are invalid on purpose (they end on the audit topic). */
  readonly ids: string[];
  readonly invalidIds: Set<string>;
  /** Offsets the group had committed when the broker went down, and the total produced. */
  readonly committedAtStop: number;
  readonly produced: number;
  /** Per partition, the group's committed offset and the topic's end offset after the run. */
  readonly committed: Map<number, bigint>;
  readonly ends: Map<number, bigint>;
  /** Keys read with read_committed, to the end of the audit and accepted topics. */
  readonly auditKeys: string[];
  readonly acceptedKeys: string[];
  /** Sample ids in the curated bucket's shards. */
  readonly curatedIds: string[];
  /** The worker's exit code after SIGTERM, and every line it logged. */
  readonly exitCode: number | null;
  readonly lines: string[];
}

async function committedOffsets(admin: Admin, groupId: string, topic: string): Promise<Map<number, bigint>> {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  return new Map(res[0]!.partitions.map((p) => [p.partition, BigInt(p.offset)]));
}

const total = (m: Map<number, bigint>) => [...m.values()].reduce((n, o) => n + (o > 0n ? o : 0n), 0n);

/** Records with a deliberately invalid one (no caption: an `invalid_record` reject) every fifth. */
async function outageRecords(prefix: string, n: number) {
  const records = await makeRecords(prefix, n);
  return records.map((r, i) => (i % 5 === 4 ? { id: r.id, image: r.image } : r));
}

/**
 * A condition on the worker's progress: fails at once when the worker has exited; a check that throws (the broker
 * still loading its coordinators) is "not yet".
 */
const progress = (worker: WorkerProcess, check: () => Promise<boolean>) => async () => {
  worker.assertRunning();
  return check().catch(() => false);
};

/** The topics (source with 2 partitions, audit, accepted), group and bucket of one scenario, on the private broker. */
interface Stage {
  readonly kafka: Kafka;
  readonly t: string;
  readonly groupId: string;
  readonly audit: string;
  readonly accepted: string;
  readonly bucket: string;
}

async function setStage(broker: PrivateKafkaBroker, admin: Admin, s3: S3Client): Promise<Stage> {
  const t = uniq('restart');
  const stage = { kafka: broker.client(), t, groupId: `${t}-group`, audit: `${t}-audit`, accepted: `${t}-accepted` };
  await admin.createTopics({
    waitForLeaders: true,
    topics: [t, stage.audit, stage.accepted].map((topic) => ({
      topic,
      numPartitions: topic === t ? 2 : 1,
      replicationFactor: 1,
    })),
  });
  const bucket = uniq('curated');
  await createBucket(s3, bucket);
  return { ...stage, bucket };
}

function startWorker(broker: PrivateKafkaBroker, stage: Stage, budgetMs: number, args?: string[]): WorkerProcess {
  return new WorkerProcess(workerEnv(broker, stage, budgetMs), { args: args ?? ['--import', 'tsx', WORKER] });
}

function workerEnv(broker: PrivateKafkaBroker, stage: Stage, budgetMs: number): Record<string, string> {
  return {
    MLMF_SOURCE: 'kafka',
    MLMF_BROKERS: broker.address,
    MLMF_SOURCE_TOPIC: stage.t,
    MLMF_GROUP_ID: stage.groupId,
    MLMF_TRANSACTIONAL_ID_PREFIX: `${stage.t}-tx`,
    MLMF_AUDIT_TOPIC: stage.audit,
    MLMF_ACCEPTED_TOPIC: stage.accepted,
    MLMF_BUCKET: stage.bucket,
    MLMF_S3_ENDPOINT: S3_ENDPOINT,
    MLMF_MODEL_DIR: MODEL,
    MLMF_EXECUTION_PROVIDER: 'cpu',
    // Every valid pair is accepted (the random-weight model's scores mean nothing); invalid ones are audit rejects.
    MLMF_THRESHOLDS: 'itm>=0',
    MLMF_METRICS: 'policy',
    MLMF_SOURCE_BATCH: '10',
    // Each batch waits this idle time before its shard is written: a floor under the run's length, so that however
    // fast the machine, the broker goes down with most of the records still to do.
    MLMF_FLUSH_MS: '150',
    // A short session: after the restart the group does not wait 30 s for the pre-outage member to expire.
    MLMF_SESSION_TIMEOUT_MS: '6000',
    MLMF_HEALTH_PORT: '0',
    MLMF_KAFKA_RETRY_BUDGET_MS: String(budgetMs),
  };
}

/** Keeps the worker's log lines in MLMF_OUTAGE_LOG=FILE, for a look at how it went through the outage. */
function keepLog(worker: WorkerProcess): void {
  if (process.env.MLMF_OUTAGE_LOG) writeFileSync(process.env.MLMF_OUTAGE_LOG, worker.lines.join('\n') + '\n');
}

export async function runOutageScenario(broker: PrivateKafkaBroker, s: OutageScenario): Promise<OutageRun> {
  let admin = broker.client().admin();
  await admin.connect();
  const s3 = s3Client();
  const stage = await setStage(broker, admin, s3);
  const { kafka, t, groupId, audit, accepted, bucket } = stage;
  const first = await outageRecords(`${t}-a`, s.before);
  const second = await outageRecords(`${t}-b`, s.after);
  await produce(kafka, t, first, 2);
  const worker = startWorker(broker, stage, 120_000);
  try {
    const started = progress(worker, async () => total(await committedOffsets(admin, groupId, t)) > 0n);
    await waitFor('the worker committing its first batches', started, 90_000);
    const committedAtStop = Number(total(await committedOffsets(admin, groupId, t)));
    await admin.disconnect();
    await broker.stop(s.signal);
    // The outage itself is a span of time; the worker must stay up through all of it.
    await holdsFor('worker alive while the broker is down', async () => !worker.exited, s.outageMs);
    await broker.resume();
    admin = kafka.admin();
    await admin.connect();
    await produce(kafka, t, second, 2);
    const produced = s.before + s.after;
    const done = progress(worker, async () => total(await committedOffsets(admin, groupId, t)) === BigInt(produced));
    await waitFor('every offset committed after the restart', done, 180_000);
    worker.assertRunning();
    const exitCode = await worker.stop();
    const ends = new Map((await admin.fetchTopicOffsets(t)).map((p) => [p.partition, BigInt(p.high)]));
    const ids = [...first, ...second].map((r) => r.id);
    const invalidIds = new Set([...first, ...second].filter((r) => !('caption' in r)).map((r) => r.id));
    return {
      ids,
      invalidIds,
      committedAtStop,
      produced,
      committed: await committedOffsets(admin, groupId, t),
      ends,
      auditKeys: (await readTopicToEnd(kafka, audit)).map((m) => m.key),
      acceptedKeys: (await readTopicToEnd(kafka, accepted)).map((m) => m.key),
      curatedIds: (await curatedIds(s3, bucket)).ids,
      exitCode,
      lines: worker.lines,
    };
  } catch (err) {
    (err as Error).message += `\nworker's last lines:\n${worker.tail()}`;
    throw err;
  } finally {
    keepLog(worker);
    await worker.kill9();
    await admin.disconnect().catch(() => undefined);
    s3.destroy();
  }
}

/**
 * What riding out the outage means: the worker stayed up and drained cleanly, the group committed every partition to
 * its end, and every record ended exactly once -- on the accepted topic (and in the bucket) or on the audit topic.
 */
export function assertRodeOutOutage(run: OutageRun, before: number): void {
  assert.ok(
    run.committedAtStop < before,
    `the broker went down mid-run (${run.committedAtStop} of ${before} committed)`,
  );
  assert.ok(
    run.lines.some((l) => /ECONNREFUSED|Connection error|Kafka transaction failed|consumer crashed/.test(l)),
    'the worker saw the broker go away',
  );
  assert.equal(run.exitCode, 0, 'SIGTERM after the run: a clean drain, exit 0');
  assert.deepEqual(run.committed, run.ends, 'every partition committed to its end offset');
  const seen = tally([...run.auditKeys, ...run.acceptedKeys]);
  assert.deepEqual(
    run.ids.filter((id) => !seen.has(id)),
    [],
    'no record lost',
  );
  assert.deepEqual(
    [...seen].filter(([, n]) => n > 1),
    [],
    'no record twice across the audit and accepted topics (read_committed)',
  );
  assert.equal(seen.size, run.ids.length, 'nothing else on the topics');
  assert.deepEqual(new Set(run.auditKeys), run.invalidIds, 'the invalid records, and only they, on the audit topic');
  const valid = run.ids.filter((id) => !run.invalidIds.has(id));
  assert.deepEqual(
    [...tally(run.curatedIds)].filter(([, n]) => n > 1),
    [],
    'no sample twice in the bucket',
  );
  assert.deepEqual(new Set(run.curatedIds), new Set(valid), 'every accepted pair in the bucket');
}

/** How a worker whose Kafka outage outlasts its retry budget ends. */
export interface PastBudgetRun {
  readonly exitCode: number | null;
  /** From the broker going down to the worker's exit, ms. */
  readonly exitAfterMs: number;
  readonly lines: string[];
}

/**
 * The worker with a short retry budget loses its broker mid-run for good (until it has exited): it must stop with a
 * runtime failure once the budget is spent, not hang. The broker is started again afterwards for the next tests.
 */
export async function runPastBudget(broker: PrivateKafkaBroker, budgetMs: number): Promise<PastBudgetRun> {
  const admin = broker.client().admin();
  await admin.connect();
  const s3 = s3Client();
  const stage = await setStage(broker, admin, s3);
  await produce(stage.kafka, stage.t, await outageRecords(`${stage.t}-a`, 300), 2);
  const worker = startWorker(broker, stage, budgetMs);
  try {
    const started = progress(worker, async () => total(await committedOffsets(admin, stage.groupId, stage.t)) > 0n);
    await waitFor('the worker committing its first batches', started, 90_000);
    await admin.disconnect();
    await broker.stop('SIGKILL');
    const down = Date.now();
    await waitFor('the worker giving up', async () => worker.exited !== undefined, budgetMs + 90_000);
    return { exitCode: worker.exited!.code, exitAfterMs: Date.now() - down, lines: worker.lines };
  } finally {
    keepLog(worker);
    await worker.kill9();
    await admin.disconnect().catch(() => undefined);
    s3.destroy();
    await broker.resume();
  }
}

/** How `mlm-filter worker` ended after a broker restart: on one SIGTERM, and on two in a row. */
export interface ShutdownRun {
  /** Exit code after one SIGTERM (a drain), and whether it exited within the wait. */
  readonly drained: { code: number | null } | undefined;
  /** Exit code after two SIGTERMs in a row. */
  readonly twice: { code: number | null } | undefined;
  readonly lines: string[];
}

/**
 * `mlm-filter worker` (the CLI, which waits for the event loop) consumes from the private broker, which restarts
 * under it; once the worker commits again, one SIGTERM must end it (kafkajs keeps a heartbeat socket open after its
 * disconnect, which kept the process alive); then a second worker, busy, gets two SIGTERMs and must exit at once.
 */
export async function runShutdownScenario(broker: PrivateKafkaBroker, waitExitMs: number): Promise<ShutdownRun> {
  let admin = broker.client().admin();
  await admin.connect();
  const s3 = s3Client();
  const stage = await setStage(broker, admin, s3);
  const cli = [CLI, 'worker'];
  await produce(stage.kafka, stage.t, await outageRecords(`${stage.t}-a`, 200), 2);
  const first = startWorker(broker, stage, 120_000, cli);
  const workers = [first];
  try {
    const committedNow = async () => Number(total(await committedOffsets(admin, stage.groupId, stage.t)));
    await waitFor(
      'the worker committing',
      progress(first, async () => (await committedNow()) > 0),
      90_000,
    );
    await admin.disconnect();
    await broker.stop('SIGKILL');
    await holdsFor('worker alive while the broker is down', async () => !first.exited, 3000);
    await broker.resume();
    admin = stage.kafka.admin();
    await admin.connect();
    const before = await committedNow();
    await produce(stage.kafka, stage.t, await outageRecords(`${stage.t}-b`, 40), 2);
    await waitFor(
      'commits after the restart',
      progress(first, async () => (await committedNow()) > before),
      120_000,
    );
    first.signal('SIGTERM');
    await waitFor('the worker exiting on SIGTERM', async () => first.exited !== undefined, waitExitMs).catch(
      () => undefined,
    );
    const drained = first.exited;
    // A busy worker: the records of a fresh group, every one still to score.
    const second = startWorker(broker, { ...stage, groupId: `${stage.groupId}-2` }, 120_000, cli);
    workers.push(second);
    await waitFor(
      'the second worker consuming',
      progress(second, async () => second.lines.some((l) => l.includes('joined consumer group'))),
      90_000,
    );
    second.signal('SIGTERM');
    // Signals sent back to back can merge into one pending signal: the second goes once the first is handled.
    const draining = () => second.lines.some((l) => l.includes('SIGTERM: graceful drain'));
    await waitFor(
      'the second worker draining',
      progress(second, async () => draining()),
      30_000,
    );
    second.signal('SIGTERM');
    await waitFor('the worker exiting on a second SIGTERM', async () => second.exited !== undefined, 10_000).catch(
      () => undefined,
    );
    return { drained, twice: second.exited, lines: [...first.lines, ...second.lines] };
  } finally {
    for (const w of workers) {
      keepLog(w);
      await w.kill9();
    }
    await admin.disconnect().catch(() => undefined);
    s3.destroy();
  }
}
