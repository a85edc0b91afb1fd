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
}

/** One source's backlog as CloudWatch sees it, supplied by the pipeline. */
export interface BacklogSignal {
  readonly label: string;
  /** Records waiting (queue depth or consumer lag). */
  readonly backlog: cloudwatch.Metric;
  /** Age of the oldest waiting record, seconds. Absent where the source cannot say (worker-reported lag). */
  readonly oldestAgeSeconds?: cloudwatch.IMetric;
  /** Records that failed permanently and wait for an operator (SQS dead-letter queue). */
  readonly deadLetters?: cloudwatch.IMetric;
  /** Running ECS tasks of the service consuming this source. */
  readonly runningTasks: cloudwatch.IMetric;
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
        title: 'Tasks and GPU utilisation',
        left: [m(METRIC.GpuUtilization, 'Average')],
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
    props.backlogs.forEach((b, i) => {
      const tag = props.backlogs.length > 1 ? `${b.label}` : '';
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
      add(
        new cloudwatch.Alarm(this, `NoProgress${tag}`, {
          alarmDescription: `${b.label}: input is waiting but no pair was processed for ${stalled.toMinutes()} minutes`,
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
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
    );
  }
}
