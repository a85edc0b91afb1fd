import type { Stack } from 'aws-cdk-lib';

/**
 * Renders an ARN the way cdk-nag names it in finding ids (`<LogicalId.Arn>`, `<AWS::Partition>`), so that an
 * acknowledgement names the exact resource it covers instead of every wildcard of a rule.
 */
export function nagResource(stack: Stack, arn: string): string {
  const render = (v: unknown): string => {
    if (typeof v === 'string') return v;
    const o = v as Record<string, unknown>;
    if (o.Ref) return `<${String(o.Ref)}>`;
    if (Array.isArray(o['Fn::GetAtt'])) return `<${(o['Fn::GetAtt'] as string[]).join('.')}>`;
    if (Array.isArray(o['Fn::Join'])) {
      const [sep, parts] = o['Fn::Join'] as [string, unknown[]];
      return parts.map(render).join(sep);
    }
    return JSON.stringify(v);
  };
  return render(stack.resolve(arn));
}
