import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { PipelineMonitoring } from '../../infra/lib/monitoring.ts';
import { WorkerMetrics } from '../../lib/metrics/worker-metrics.ts';
import type { Outcome } from '../../lib/types.ts';

const NS = 'MlmFilterCheck';

/** Every metric name the synthesized dashboard and alarms read from our namespace. */
function dashboardMetricNames(): Set<string> {
  const stack = new Stack(new App(), 'Ops');
  const backlog = new cloudwatch.Metric({ namespace: 'AWS/SQS', metricName: 'ApproximateNumberOfMessagesVisible' });
  new PipelineMonitoring(stack, 'Monitoring', {
    pipelineName: 'p1',
    namespace: NS,
    backlogs: [{ label: 'sqs', backlog, runningTasks: backlog, oldestAgeSeconds: backlog, deadLetters: backlog }],
  });
  const template = Template.fromStack(stack).toJSON() as {
    Resources: Record<string, { Type: string; Properties: unknown }>;
  };
  const names = new Set<string>();
  for (const r of Object.values(template.Resources)) {
    if (r.Type === 'AWS::CloudWatch::Dashboard') {
      // The body is an Fn::Join of strings and tokens; the metric names are all in the string parts.
      const body = JSON.stringify(r.Properties);
      const unescaped = body.replace(/\\+"/g, '"');
      for (const m of unescaped.matchAll(new RegExp(`\\["${NS}","(\\w+)"`, 'g'))) names.add(m[1]!);
      for (const m of unescaped.matchAll(/MetricName="(\w+)"/g)) names.add(m[1]!);
    }
    if (r.Type === 'AWS::CloudWatch::Alarm') {
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) v.forEach(walk);
        else if (v && typeof v === 'object') {
          const o = v as Record<string, unknown>;
          if (o.Namespace === NS && typeof o.MetricName === 'string') names.add(o.MetricName);
          Object.values(o).forEach(walk);
        }
      };
      walk(r.Properties);
    }
  }
  return names;
}

/** Every metric name the worker's EMF output carries when every kind of observation happened. */
function emittedMetricNames(): Set<string> {
  const lines: string[] = [];
  const m = new WorkerMetrics({ namespace: NS, pipeline: 'p1', emit: (l) => lines.push(l), emfIntervalMs: 0 });
  const base: Omit<Outcome, 'id' | 'decision' | 'reasons' | 'scores'> = {
    record: { raw: '{}', origin: { kind: 'file', path: 'x', line: 1 } },
  };
  m.observe({ ...base, id: 'a', decision: 'accept', reasons: [], scores: { itm: 90, odf: 50, ctq: 70, su: 60 } });
  m.observe({ ...base, id: 'b', decision: 'reject', reasons: [{ code: 'duplicate', message: 'dup' }], scores: {} });
  m.observeBatchLatency(100);
  m.setConsumerLag(3);
  m.setSourceQueueDepth(5);
  m.setGpuUtilization(77);
  m.countError('scorer_crash');
  m.close();
  const names = new Set<string>();
  for (const line of lines) {
    const doc = JSON.parse(line) as {
      _aws: { CloudWatchMetrics: { Namespace: string; Metrics: { Name: string }[] }[] };
    };
    for (const d of doc._aws.CloudWatchMetrics) {
      assert.equal(d.Namespace, NS);
      for (const x of d.Metrics) names.add(x.Name);
    }
  }
  return names;
}

test('the dashboard and alarms read only metrics WorkerMetrics can emit (the running worker: test/stream/kafka.test.ts)', () => {
  const dashboard = dashboardMetricNames();
  const emitted = emittedMetricNames();
  // Guard the extraction itself: these widgets exist on the dashboard, so a parser that finds nothing must fail.
  for (const n of [METRIC.PairsIn, METRIC.RejectsByReason, METRIC.ScoreITM, METRIC.BatchLatencyMs]) {
    assert.ok(dashboard.has(n), `dashboard extraction missed ${n}: found ${[...dashboard].join(', ')}`);
  }
  const missing = [...dashboard].filter((n) => !emitted.has(n));
  assert.deepEqual(missing, [], `dashboard reads metrics the worker never emits: ${missing.join(', ')}`);
});

test('WorkerMetrics emits exactly the contract names of lib/metrics/metric-names.ts', () => {
  assert.deepEqual([...emittedMetricNames()].sort(), Object.values(METRIC).sort());
});

test('every METRIC.* the infra code references (autoscaling, alarms) is emitted', async () => {
  const emitted = emittedMetricNames();
  const dir = new URL('../../infra/lib/', import.meta.url);
  const referenced = new Set<string>();
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.ts') && n !== 'metric-names.ts')) {
    const src = await readFile(new URL(f, dir), 'utf8');
    for (const m of src.matchAll(/\bMETRIC\.(\w+)/g)) referenced.add(m[1]!);
  }
  assert.ok(referenced.has('PairsIn'), 'no METRIC reference found in infra/lib');
  const missing = [...referenced].filter((k) => !emitted.has((METRIC as Record<string, string>)[k] ?? k));
  assert.deepEqual(missing, []);
});
