/**
 * A private single-node KRaft Kafka broker for tests that stop and restart their broker (the shared one on 9092,
 * which other suites use at the same time, must never go down). It runs from the jars scripts/services.sh resolved
 * into .services/kafka/lib, with that script's server properties on other ports and its own log dir in a temp
 * directory, so a restart comes back with every topic, transaction and committed offset it had.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { waitFor } from '../helpers/poll.ts';

const ROOT = new URL('../..', import.meta.url).pathname;
const JARS = join(ROOT, '.services/kafka/lib');
const SERVICES = join(ROOT, 'scripts/services');
/** Port pairs (client, controller) tried in turn; below the ephemeral range, so no outgoing connection takes one
 * while the broker is down. */
const PORT_PAIRS = [
  [19092, 19093],
  [19192, 19193],
  [19292, 19293],
  [19392, 19393],
] as const;

/** Why a private broker cannot run here (skip reason), or false. Under CI=true a missing piece is a failure. */
export function privateBrokerUnavailable(): string | false {
  let reason: string | undefined;
  // The shared broker may run from elsewhere (another checkout's services): fetch the jars here (cached) if missing.
  if (!existsSync(join(JARS, '.complete'))) {
    spawnSync('bash', [join(ROOT, 'scripts/services.sh'), 'install', 'kafka'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  if (!existsSync(join(JARS, '.complete')))
    reason = 'no Kafka jars in .services/kafka/lib (bash scripts/services.sh install kafka failed)';
  else if (spawnSync('java', ['-version']).status !== 0) reason = 'no java on PATH';
  if (!reason) return false;
  if (process.env.CI === 'true') throw new Error(`CI: private Kafka broker unavailable: ${reason}`);
  return reason;
}

function portBusy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A KRaft cluster id as Kafka's Uuid prints it (url-safe base64 of 16 bytes; never starting with '-'). */
function clusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

const javaArgs = (main: string, ...args: string[]) => [
  '-Xms256m',
  '-Xmx512m',
  '-XX:+UseG1GC',
  '-Djava.awt.headless=true',
  `-Dlog4j2.configurationFile=${join(SERVICES, 'log4j2.properties')}`,
  '-cp',
  `${JARS}/*`,
  main,
  ...args,
];

export class PrivateKafkaBroker {
  private child: ChildProcess | undefined;
  private readonly killOnExit = () => this.child?.kill('SIGKILL');

  private constructor(
    readonly dir: string,
    readonly port: number,
  ) {
    process.once('exit', this.killOnExit);
  }

  /** Formats a fresh log dir on free ports and starts the broker; resolves once it answers metadata requests. */
  static async start(): Promise<PrivateKafkaBroker> {
    let ports: readonly [number, number] | undefined;
    for (const pair of PORT_PAIRS) {
      if (!(await portBusy(pair[0])) && !(await portBusy(pair[1]))) {
        ports = pair;
        break;
      }
    }
    if (!ports) throw new Error(`no free port pair for a private broker among ${JSON.stringify(PORT_PAIRS)}`);
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-kafka-'));
    const props = readFileSync(join(SERVICES, 'kafka-server.properties'), 'utf8')
      .replaceAll('@LOG_DIR@', join(dir, 'data'))
      .replaceAll('127.0.0.1:9092', `127.0.0.1:${ports[0]}`)
      .replaceAll('127.0.0.1:9093', `127.0.0.1:${ports[1]}`);
    writeFileSync(join(dir, 'server.properties'), props);
    const format = spawnSync(
      'java',
      javaArgs('kafka.tools.StorageTool', 'format', '-t', clusterId(), '-c', join(dir, 'server.properties')),
      { encoding: 'utf8' },
    );
    if (format.status !== 0) throw new Error(`kafka storage format failed: ${format.stdout}${format.stderr}`);
    const broker = new PrivateKafkaBroker(dir, ports[0]);
    await broker.resume();
    return broker;
  }

  /** `127.0.0.1:<port>`, for MLMF_BROKERS and kafkajs. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  client(clientId = 'private-broker-test'): Kafka {
    return new Kafka({ clientId, brokers: [this.address], logLevel: logLevel.NOTHING });
  }

  /** The broker's own log (appended across restarts). */
  logTail(lines = 30): string {
    return readFileSync(join(this.dir, 'broker.log'), 'utf8').split('\n').slice(-lines).join('\n');
  }

  /** Starts the broker process on its existing log dir; resolves once it answers, rejects if it exits first. */
  async resume(timeoutMs = 90_000): Promise<void> {
    if (this.running) return;
    const log = openSync(join(this.dir, 'broker.log'), 'a');
    const child = spawn('java', javaArgs('kafka.Kafka', join(this.dir, 'server.properties')), {
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    this.child = child;
    const answers = async () => {
      if (!this.running) throw new Error(`private broker exited during startup:\n${this.logTail()}`);
      return this.answers();
    };
    await waitFor('the private broker to answer', answers, timeoutMs, 250).catch((err: Error) => {
      if (this.running) err.message += `:\n${this.logTail()}`;
      throw err;
    });
  }

  /** Stops the broker process: SIGTERM is a clean shutdown, SIGKILL a crash (the log dir stays either way). */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', timeoutMs = 30_000): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  /** Kills the broker and deletes its log dir (the suite's `after` hook). */
  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    process.removeListener('exit', this.killOnExit);
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async answers(): Promise<boolean> {
    const admin = new Kafka({
      clientId: 'private-broker-probe',
      brokers: [this.address],
      logLevel: logLevel.NOTHING,
      retry: { retries: 0 },
      connectionTimeout: 1000,
    }).admin();
    try {
      await admin.connect();
      return (await admin.describeCluster()).brokers.length > 0;
    } catch {
      return false;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }
}
