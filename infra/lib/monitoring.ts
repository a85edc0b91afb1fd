import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { METRIC, PIPELINE_DIMENSION, REASON_DIMENSION, SCORE_METRIC } from '../../lib/metrics/metric-names.ts';

/** Alarm thresholds and where alarms go. */
export interface MonitoringOptions {
  /** Alarms and OK transitions are sent here. @default - alarms without actions */
  readonly alarmTopic?: sns.ITopic;
  /** Alarm when the oldest unprocessed input is older than this. @default Duration.minutes(30) */
  readonly maxInputAge?: Duration;
  /** Alarm when Errors / PairsIn exceeds this fraction over 15 minutes. @default 0.01 */
  readonly maxErrorRate?: number;
  /** Alarm when input waits but nothing was processed for this long. @default Duration.minutes(15) */
  readonly noProgressAfter?: Duration;
  /** Alarm when the worker or the lag probe has published nothing for this long. @default Duration.minutes(10) */
  readonly silentAfter?: Duration;
}

/** One source's backlog as CloudWatch sees it, supplied by the pipeline. */
export interface BacklogSignal {
  readonly label: string;
  /**
   * Records waiting (queue depth or consumer lag). One in the pipeline's own namespace is published by our code (the
   * lag probe, the worker) every minute, so its absence is an alarm; AWS's own metrics may lapse on an idle source.
   */
  readonly backlog: cloudwatch.Metric;
  /** Age of the oldest waiting record, seconds. Absent where the source cannot say (worker-reported lag). */
  readonly oldestAgeSeconds?: cloudwatch.IMetric;
  /** Records that failed permanently and wait for an operator (SQS dead-letter queue). */
  readonly deadLetters?: cloudwatch.IMetric;
  /** Running ECS tasks of the service consuming this source. */
  readonly runningTasks: cloudwatch.Metric;
}

export interface PipelineMonitoringProps extends MonitoringOptions {
  readonly pipelineName: string;
  readonly namespace: string;
  readonly backlogs: readonly BacklogSignal[];
}

/** The pipeline's dashboard and alarms, built on the worker's EMF metrics and the sources' own metrics. */
export class PipelineMonitoring extends Construct {
  readonly dashboard: cloudwatch.Dashboard;
  readonly alarms: cloudwatch.Alarm[] = [];

  constructor(scope: Construct, id: string, props: PipelineMonitoringProps) {
    super(scope, id);
    const dims = { [PIPELINE_DIMENSION]: props.pipelineName };
    const m = (metricName: string, statistic = 'Sum', period = Duration.minutes(1)) =>
      new cloudwatch.Metric({ namespace: props.namespace, metricName, dimensionsMap: dims, statistic, period });

    const pairsIn = m(METRIC.PairsIn);
    const accepted = m(METRIC.PairsAccepted);
    const rejected = m(METRIC.PairsRejected);
    const errors = m(METRIC.Errors);

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: `${props.pipelineName}-mlm-filter`.replace(/[^A-Za-z0-9_-]/g, '-'),
      defaultInterval: Duration.hours(3),
    });
    const reasonSearch = new cloudwatch.MathExpression({
      expression: `SEARCH('{${props.namespace},${PIPELINE_DIMENSION},${REASON_DIMENSION}} MetricName="${METRIC.RejectsByReason}" ${PIPELINE_DIMENSION}="${props.pipelineName}"', 'Sum', 60)`,
      label: 'rejects by reason',
      period: Duration.minutes(1),
    });
    const scoreWidgets = Object.entries(SCORE_METRIC).map(
      ([short, name]) =>
        new cloudwatch.GraphWidget({
          title: `Score ${short.toUpperCase()} (p10 / p50 / p90)`,
          left: ['p10', 'p50', 'p90'].map((stat) => m(name, stat, Duration.minutes(5)).with({ label: stat })),
          leftYAxis: { min: 0, max: 100 },
          width: 6,
        }),
    );
    this.dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Throughput (pairs / minute)',
        left: [pairsIn, accepted, rejected],
        width: 12,
      }),
      new cloudwatch.GraphWidget({
        title: 'Accept rate (%)',
        left: [
          new cloudwatch.MathExpression({
            expression: '100 * accepted / pairsIn',
            usingMetrics: { accepted, pairsIn },
            label: 'accepted %',
            period: Duration.minutes(1),
          }),
        ],
        leftYAxis: { min: 0, max: 100 },
        width: 12,
      }),
      ...scoreWidgets,
      new cloudwatch.GraphWidget({
        title: 'Backlog and lag',
        left: props.backlogs.map((b) => b.backlog),
        right: props.backlogs.flatMap((b) => (b.oldestAgeSeconds ? [b.oldestAgeSeconds] : [])),
        width: 12,
      }),
      new cloudwatch.GraphWidget({
        title: 'Tasks and GPU utilisation (%)',
        left: [
          m(METRIC.GpuUtilization, 'Average').with({ label: 'GPU utilisation' }),
          m(METRIC.GpuMemoryUtilization, 'Average').with({ label: 'GPU memory used' }),
        ],
        leftYAxis: { min: 0, max: 100 },
        right: props.backlogs.map((b) => b.runningTasks),
        width: 12,
      }),
      new cloudwatch.GraphWidget({ title: 'Rejects by reason code', left: [reasonSearch], width: 12 }),
      new cloudwatch.GraphWidget({
        title: 'Errors and batch latency',
        left: [errors],
        right: ['p50', 'p90', 'p99'].map((stat) => m(METRIC.BatchLatencyMs, stat).with({ label: `latency ${stat}` })),
        width: 12,
      }),
    );

    const action = props.alarmTopic ? new cwActions.SnsAction(props.alarmTopic) : undefined;
    const add = (alarm: cloudwatch.Alarm) => {
      if (action) {
        alarm.addAlarmAction(action);
        alarm.addOkAction(action);
      }
      this.alarms.push(alarm);
      return alarm;
    };

    const maxAge = props.maxInputAge ?? Duration.minutes(30);
    const stalled = props.noProgressAfter ?? Duration.minutes(15);
    const stalledPeriods = Math.max(1, Math.ceil(stalled.toMinutes() / 5));
    const silentPeriods = Math.max(1, Math.ceil((props.silentAfter ?? Duration.minutes(10)).toMinutes() / 5));
    props.backlogs.forEach((b, i) => {
      const tag = props.backlogs.length > 1 ? `${b.label}` : '';
      // AWS's source metrics (SQS, MSK) lapse when the source is idle or the group never committed: missing is fine.
      if (b.oldestAgeSeconds) {
        add(
          new cloudwatch.Alarm(this, `OldestInput${tag}`, {
            alarmDescription: `${b.label}: the oldest waiting record is older than ${maxAge.toMinutes()} minutes`,
            metric: b.oldestAgeSeconds,
            threshold: maxAge.toSeconds(),
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluationPeriods: 3,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          }),
        );
      }
      if (b.deadLetters) {
        add(
          new cloudwatch.Alarm(this, `DeadLetters${tag}`, {
            alarmDescription: `${b.label}: records reached the dead-letter queue`,
            metric: b.deadLetters,
            threshold: 0,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluationPeriods: 1,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          }),
        );
      }
      if (b.backlog.namespace === props.namespace) {
        // Published every minute by the lag probe (or the workers) whatever the traffic: a gap means the publisher
        // stopped, and scaling and the no-progress alarm are blind meanwhile.
        add(
          new cloudwatch.Alarm(this, `BacklogSilent${tag}`, {
            alarmDescription: `${b.label}: ${b.backlog.metricName} was not published for ${silentPeriods * 5} minutes: the lag probe or the workers stopped reporting, scaling cannot see the backlog`,
            metric: b.backlog.with({ statistic: 'SampleCount', period: Duration.minutes(5) }),
            threshold: 1,
            comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluationPeriods: silentPeriods,
            treatMissingData: cloudwatch.TreatMissingData.BREACHING,
          }),
        );
      }
      add(
        new cloudwatch.Alarm(this, `NoProgress${tag}`, {
          alarmDescription: `${b.label}: input is waiting but no pair was processed for ${stalled.toMinutes()} minutes`,
          // FILL: a worker that stopped reporting counts as no progress. Without a backlog value the expression has no
          // data: BacklogSilent covers our own backlog metrics, and an AWS one is absent only on an idle source.
          metric: new cloudwatch.MathExpression({
            expression: `IF(backlog${i} > 0 AND FILL(pairsIn${i}, 0) == 0, 1, 0)`,
            usingMetrics: {
              [`backlog${i}`]: b.backlog.with({ period: Duration.minutes(5) }),
              [`pairsIn${i}`]: m(METRIC.PairsIn, 'Sum', Duration.minutes(5)),
            },
            period: Duration.minutes(5),
            label: 'stalled',
          }),
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: stalledPeriods,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
    });

    if (props.backlogs.length > 0)
      add(this.workerSilentAlarm(props.backlogs, m(METRIC.PairsIn, 'SampleCount', Duration.minutes(5)), silentPeriods));

    add(
      new cloudwatch.Alarm(this, 'ErrorRate', {
        alarmDescription: `Worker errors exceed ${(props.maxErrorRate ?? 0.01) * 100}% of input`,
        metric: new cloudwatch.MathExpression({
          expression: 'FILL(errors, 0) / IF(FILL(pairsIn, 0) > 0, pairsIn, 1)',
          usingMetrics: {
            errors: m(METRIC.Errors, 'Sum', Duration.minutes(5)),
            pairsIn: m(METRIC.PairsIn, 'Sum', Duration.minutes(5)),
          },
          period: Duration.minutes(5),
          label: 'error rate',
        }),
        threshold: props.maxErrorRate ?? 0.01,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 3,
        // No data: no worker runs (scaled to zero), or the workers are silent, which WorkerSilent reports.
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
    );
  }

  /**
   * Tasks run but no worker publishes: every worker writes its counters each minute from its start (zeros included),
   * so running tasks without a single `PairsIn` sample means the workers hang or their metrics are lost. Missing
   * PairsIn is filled with 0, i.e. counts as silent; the expression itself has data whenever ECS reports the tasks.
   */
  private workerSilentAlarm(
    backlogs: readonly BacklogSignal[],
    reports: cloudwatch.Metric,
    periods: number,
  ): cloudwatch.Alarm {
    const tasks: Record<string, cloudwatch.IMetric> = {};
    // At the expression's period: a metric at another period is overridden anyway, with a synth warning (--strict).
    const period = Duration.minutes(5);
    backlogs.forEach((b, i) => (tasks[`tasks${i}`] = b.runningTasks.with({ period })));
    const running = Object.keys(tasks)
      .map((id) => `FILL(${id}, 0)`)
      .join(' + ');
    return new cloudwatch.Alarm(this, 'WorkerSilent', {
      alarmDescription: `Worker tasks run but published no metrics for ${periods * 5} minutes: hung workers or lost EMF logs`,
      metric: new cloudwatch.MathExpression({
        expression: `IF(${running} > 0 AND FILL(reports, 0) == 0, 1, 0)`,
        usingMetrics: { ...tasks, reports },
        period,
        label: 'tasks without metrics',
      }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: periods,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
  }
}
